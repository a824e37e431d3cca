"""links.html as a user sees it: a real job rendered and uploaded by the daemon, the page opened from the
shared folder (file://) in a real headless Chromium."""

from __future__ import annotations

import hashlib
import html
import os
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e import sandbox
from tests.e2e.browser import browser_page
from tests.e2e.harness import Daemon, Share, wait_for

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "links-page.png"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


def saved_as(url: str) -> str:
    """The Content-Disposition the storage answers: a browser saves (attachment) rather than plays."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.headers.get("Content-Disposition", ""))


def finished(share: Share, job: str) -> Any:
    return (doc := share.links(job)) and doc["status"] in ("done", "partial", "failed") and doc


def test_links_page_shows_each_video_copies_and_downloads_from_the_shared_folder(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any]
) -> None:
    share = Share(tmp_path / "shared", {"storage": external, "inbox": {"settle_time": "0.3s"}})
    for name in ("face", "face_b", "speech"):
        shutil.copy(media[name], share.inbox / "media")
    (share.inbox / "media" / "broken.mp4").write_text("this is a text file, not a video\n")
    run = Daemon(share, "run")
    try:
        share.drop(
            "spring-promo.yaml",
            {
                "audio": "media/speech.wav",
                "videos": ["media/anchor.mp4", "media/anchor_b.mp4", "media/broken.mp4"],
                "distribute": True,
            },
        )
        doc = wait_for(lambda: finished(share, "spring-promo"), 240, "job distributed", run)
    finally:
        run.terminate()
    folder = share.outputs / "spring-promo"
    ready = [v for v in doc["videos"] if v["status"] == "ready"]
    failed = [v for v in doc["videos"] if v["status"] == "failed"]
    assert len(ready) == 2, doc
    assert len(failed) == 1, doc
    assert not any((folder / v["output"]).exists() for v in ready), "evicted: the page must not need them"
    assert all(0 < (folder / f"{Path(v['output']).stem}.poster.jpg").stat().st_size < 40_000 for v in ready)

    began = time.monotonic()
    with browser_page(tmp_path, timezone="Asia/Shanghai") as page:
        page.goto((folder / "links.html").as_uri())
        cards = page.locator("li.video")
        assert cards.count() == 3
        for video in ready:
            card = cards.filter(has=page.locator("h2", has_text=video["output"]))
            assert card.locator("img.poster").evaluate("img => img.complete && img.naturalWidth") == 320
            assert card.locator(".badge").inner_text() == "Ready"
            assert card.locator("a.download").get_attribute("href") == video["url"]
            assert (
                hashlib.sha256(fetch(card.locator("a.download").get_attribute("href"))).hexdigest()
                == (video["sha256"])
            )
            assert saved_as(video["url"]).startswith(f'attachment; filename="{video["output"]}"')
            # the expiry in the reader's zone (UTC+8 here), as toLocaleString writes it
            local = card.locator("time").inner_text()
            assert local != video["expires_at"], local
            assert "UTC" not in local, local
            card.locator("button.copy").click()
            page.wait_for_function(
                "el => el.textContent === 'Link copied'", arg=card.locator(".copied").element_handle()
            )
            assert page.evaluate("navigator.clipboard.readText()") == video["url"]
        broken = cards.filter(has=page.locator("h2", has_text=failed[0]["output"]))
        assert broken.locator(".badge").inner_text() == "Failed"
        reason = broken.locator(".reason").inner_text()
        assert reason == f"This video could not be made: {failed[0]['error']}"
        assert "not a video" in reason
        assert "media/broken.mp4 is not" in reason
        assert str(share.root) not in reason
        assert broken.locator("a, button").count() == 0
        shot = SCREENSHOT if os.environ.get("LIPSYNCD_UPDATE_SCREENSHOT") else tmp_path / SCREENSHOT.name
        page.screenshot(path=str(shot), full_page=True)  # LIPSYNCD_UPDATE_SCREENSHOT=1: the README's
    browser_s = time.monotonic() - began
    print(f"\nbrowser part: {browser_s:.1f} s; screenshot {shot}")
    assert browser_s < 30


def test_uploaded_page_has_one_link_and_follows_refreshed_links(
    tmp_path: Path, external: dict[str, Any]
) -> None:
    overrides = {
        "storage": external,
        "inbox": {"settle_time": "0.3s"},
        "links": {"upload_page": True, "refresh_before": "7d"},  # --refresh re-signs every link
    }
    share = Share(tmp_path / "shared", overrides)
    sandbox.tiny_media(share.inbox / "media")
    run = Daemon(share, "run")
    try:
        manifest = {"audio": "media/voice.wav", "videos": ["media/face.mp4"], "distribute": True}
        share.drop("batch.yaml", manifest)
        first = wait_for(lambda: published(share, "batch"), 120, "page uploaded", run)
        page = share.outputs / "batch" / "links.html"
        assert fetch(first["page_url"]) == page.read_bytes()
        assert html.escape(first["videos"][0]["url"]) in page.read_text()
        # presigned links carry whole seconds: re-signed in a later second, they differ
        seen = int(time.time())
        wait_for(lambda: int(time.time()) > seen, 5, "the next whole second")
        assert share.lipsyncd("links", "--refresh").returncode == 0
        second = wait_for(
            lambda: (doc := published(share, "batch")) and doc["page_url"] != first["page_url"] and doc,
            60,
            "page uploaded again after the links were re-signed",
            run,
        )
    finally:
        run.terminate()
    stored = fetch(second["page_url"]).decode()
    assert second["videos"][0]["url"] != first["videos"][0]["url"]
    assert html.escape(second["videos"][0]["url"]) in stored
    assert html.escape(first["videos"][0]["url"]) not in stored


def published(share: Share, job: str) -> Any:
    return (doc := finished(share, job)) and doc.get("page_url") and doc
