"""Distribution as users see it, through real daemon processes and a real SeaweedFS: links appear in
links.json, they download the exact bytes rendered, local copies go, and nothing is lost when the upload
watcher is killed mid-upload or the storage goes away."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemon.distribute.embedded import EmbeddedS3
from tests.e2e.conftest import WebhookReceiver
from tests.e2e.harness import Daemon, Share, statuses, wait_for


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


def http_status(url: str) -> int:
    try:
        fetch(url)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def done(share: Share, job: str) -> Any:
    return (doc := share.links(job)) and doc["status"] == "done" and doc


def test_embedded_defaults_share_links_that_download_the_rendered_bytes(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    share = Share(tmp_path / "shared", {"service": {"metrics_dir": str(tmp_path / "metrics")}})
    for name in ("face", "face_b", "speech"):
        shutil.copy(media[name], share.inbox / "media")
    run = Daemon(share, "run")  # both watchers, embedded storage, as in the quick start
    try:
        share.drop(
            "shared.yaml",
            {
                "audio": "media/speech.wav",
                "videos": ["media/anchor.mp4", "media/anchor_b.mp4"],
                "distribute": True,
            },
        )
        share.drop("private.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"]})
        share.drop(
            "brief.yaml",
            {
                "audio": "media/speech.wav",
                "videos": ["media/anchor.mp4"],
                "distribute": True,
                "link_ttl": "2s",
            },
        )
        shared = wait_for(lambda: done(share, "shared"), 180, "shared job distributed", run)
        private = wait_for(lambda: done(share, "private"), 60, "private job done", run)
        brief = wait_for(lambda: done(share, "brief"), 60, "brief job distributed", run)
        for video in shared["videos"]:
            assert video["status"] == "ready"
            assert video["local_copy"] is False
            assert hashlib.sha256(fetch(video["url"])).hexdigest() == video["sha256"]
            assert video["object_key"].endswith(f"/shared/{video['output']}")
            assert not (share.outputs / "shared" / video["output"]).exists()
        unsigned = shared["videos"][0]["url"].split("?")[0]
        assert http_status(unsigned) == 403, "the storage must refuse unsigned requests"
        tampered = shared["videos"][0]["url"].replace("X-Amz-Expires=86400", "X-Amz-Expires=86401")
        assert http_status(tampered) == 403
        assert private["videos"][0]["status"] == "rendered"
        assert private["videos"][0]["url"] is None
        assert (share.outputs / "private" / "anchor.mp4").exists()
        time.sleep(max(0.0, _expires(brief) - time.time()) + 1.5)
        assert http_status(brief["videos"][0]["url"]) == 403, "an expired link must be refused"
    finally:
        assert run.terminate(timeout=90) == 0
    leaked = [line for line in run.output().splitlines() if "X-Amz-Signature=" in line]
    assert leaked == [], "signed URLs must not appear in logs"
    # one textfile for the render and upload processes: a view of the ledger's counters
    assert [p.name for p in (tmp_path / "metrics").iterdir()] == ["lipsyncd.prom"]
    metrics = (tmp_path / "metrics" / "lipsyncd.prom").read_text().splitlines()
    frames = sum(v["frames"] for doc in (shared, private, brief) for v in doc["videos"])
    assert f"lipsyncd_frames_total {frames}" in metrics
    sizes = sum(v["size"] for doc in (shared, brief) for v in doc["videos"])
    assert f"lipsyncd_upload_bytes_total {sizes}" in metrics
    finished = sum(doc["status"] == "done" for doc in (shared, private, brief))
    assert f'lipsyncd_jobs_total{{state="done"}} {finished}' in metrics


def _expires(links: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(links["videos"][0]["expires_at"].replace("Z", "+00:00")).timestamp()


def journalled_parts(state: Path) -> int:
    try:
        with sqlite3.connect(state / "lipsyncd.db", timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM parts").fetchone()[0])
    except sqlite3.Error:
        return 0


def await_first_part(state: Path) -> None:
    """Poll tightly: on loopback a part takes a few milliseconds."""
    deadline = time.monotonic() + 60
    while journalled_parts(state) < 1:
        assert time.monotonic() < deadline, "no part was journalled within 60 s"
        time.sleep(0.002)


@pytest.mark.parametrize("resumer", ["the same worker", "another worker"])
def test_kill_9_mid_multipart_upload_resumes_without_resending(
    tmp_path: Path,
    media: dict[str, Path],
    embedded_s3: EmbeddedS3,
    s3_client: Any,
    external: dict[str, Any],
    resumer: str,
) -> None:
    """The upload's multipart state (its UploadId and the parts sent) lives in the ledger, so whoever
    takes the video next continues it: the killed worker restarted, or another upload worker (on another
    host, with a shared ledger) once the killed one's lease lapsed."""
    share = Share(
        tmp_path / "shared",
        {
            "storage": external,
            "upload": {
                "multipart_threshold": "5MiB",
                "part_size": "5MiB",
                "part_workers": 1,
                "lease_seconds": "3s",
            },
            "render": {"crf": 0, "preset": "ultrafast"},  # lossless: a 3 s 720p render is ~20 MB, 4 parts
        },
    )
    big = share.inbox / "media" / "big.mp4"
    from daemon.samples import write_face_clip

    write_face_clip(big, 6.0, 25, (1280, 720))
    shutil.copy(media["long_speech"], share.inbox / "media")
    share.drop("big.yaml", {"audio": "media/long.wav", "videos": ["media/big.mp4"], "distribute": True})
    assert share.lipsyncd("render", "--once").returncode == 0
    rendered = share.links("big")["videos"][0]  # type: ignore[index]
    weed = embedded_s3._proc
    assert weed is not None
    upload = Daemon(share, "upload")
    try:
        await_first_part(share.state)
        os.kill(weed.pid, signal.SIGSTOP)  # hold the storage so the upload is caught in the middle
        sent_before = journalled_parts(share.state)
        upload.kill9()
    finally:
        os.kill(weed.pid, signal.SIGCONT)
    assert statuses(share.links("big")) == ["uploading"]
    assert (share.outputs / "big" / "big.mp4").exists(), "nothing may be evicted before verification"
    slot = "0" if resumer == "the same worker" else "1"
    upload = Daemon(share, "upload", "--slot", slot)
    try:
        links = wait_for(lambda: done(share, "big"), 120, "upload resumed and finished", upload)
    finally:
        upload.terminate()
    assert links["videos"][0]["uploaded_by"].endswith(f":upload@{slot}")
    finished = [e for e in upload.events() if e["event"] == "upload_done"]
    parts = finished[0]["parts"]
    assert len(finished) == 1
    assert parts >= 6
    assert finished[0]["sent_parts"] <= parts - sent_before, "parts sent before the kill were sent again"
    video = links["videos"][0]
    assert video["sha256"] == rendered["sha256"]
    assert hashlib.sha256(fetch(video["url"])).hexdigest() == video["sha256"]
    listed = s3_client.list_objects_v2(Bucket=external["bucket"], Prefix=external["prefix"] + "/")
    assert [o["Key"] for o in listed.get("Contents", [])] == [video["object_key"]], "one object per video"
    assert not (share.outputs / "big" / "big.mp4").exists()


def test_uploads_wait_while_storage_is_down_and_finish_when_it_returns(
    tmp_path: Path, media: dict[str, Path], embedded_s3: EmbeddedS3, external: dict[str, Any]
) -> None:
    share = Share(tmp_path / "shared", {"storage": external})
    for name in ("face", "speech"):
        shutil.copy(media[name], share.inbox / "media")
    render, upload = Daemon(share, "render"), Daemon(share, "upload")
    try:
        wait_for(
            lambda: any(e["event"] == "upload_ready" for e in upload.events()), 60, "upload ready", upload
        )
        embedded_s3.kill()
        share.drop(
            "outage.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"], "distribute": True}
        )
        wait_for(lambda: statuses(share.links("outage")) == ["uploading"], 120, "rendering goes on", render)
        wait_for(
            lambda: sum(e["event"] == "storage_retry" for e in upload.events()) >= 2,
            60,
            "the upload retrying while storage is down",
            upload,
        )
        assert statuses(share.links("outage")) == ["uploading"]
        embedded_s3.start()
        links = wait_for(lambda: done(share, "outage"), 120, "upload finished after the outage", upload)
    finally:
        if not embedded_s3.running:
            embedded_s3.start()
        render.terminate()
        upload.terminate()
    assert hashlib.sha256(fetch(links["videos"][0]["url"])).hexdigest() == links["videos"][0]["sha256"]


def test_webhook_gets_the_links_once(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any], webhook_receiver: WebhookReceiver
) -> None:
    url = webhook_receiver.url
    share = Share(
        tmp_path / "shared", {"storage": external, "webhooks": {"team": {"kind": "json", "url": url}}}
    )
    for name in ("face", "speech"):
        shutil.copy(media[name], share.inbox / "media")
    share.drop(
        "hooked.yaml",
        {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"], "distribute": True, "notify": ["team"]},
    )
    assert share.lipsyncd("run", "--once").returncode == 0
    wait_for(lambda: webhook_receiver.bodies, 10, "webhook call")
    upload = Daemon(share, "upload")  # a restart must not notify again
    wait_for(lambda: any(e["event"] == "upload_ready" for e in upload.events()), 60, "upload ready", upload)
    time.sleep(1.5)
    upload.terminate()
    assert len(webhook_receiver.bodies) == 1
    body = webhook_receiver.bodies[0]
    assert body["job"] == "hooked"
    links = share.links("hooked")
    assert links is not None
    assert body["videos"][0]["url"] == links["videos"][0]["url"]


def test_sigterm_mid_multipart_upload_leaves_it_resumable(
    tmp_path: Path, embedded_s3: EmbeddedS3, media: dict[str, Path], external: dict[str, Any]
) -> None:
    share = Share(
        tmp_path / "shared",
        {
            "storage": external,
            "upload": {"multipart_threshold": "5MiB", "part_size": "5MiB", "part_workers": 1},
            "render": {"crf": 0, "preset": "ultrafast"},
        },
    )
    from daemon.samples import write_face_clip

    write_face_clip(share.inbox / "media" / "big.mp4", 6.0, 25, (1280, 720))
    shutil.copy(media["long_speech"], share.inbox / "media")
    share.drop("term.yaml", {"audio": "media/long.wav", "videos": ["media/big.mp4"], "distribute": True})
    assert share.lipsyncd("render", "--once").returncode == 0
    weed = embedded_s3._proc
    assert weed is not None
    upload = Daemon(share, "upload")
    try:
        await_first_part(share.state)
        os.kill(weed.pid, signal.SIGSTOP)  # a part is in flight while SIGTERM arrives
        upload.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    finally:
        os.kill(weed.pid, signal.SIGCONT)
    assert upload.proc.wait(timeout=90) == 0
    kept = journalled_parts(share.state)
    parts = -(-(share.outputs / "term" / "big.mp4").stat().st_size // (5 << 20))
    assert 1 <= kept < parts
    assert statuses(share.links("term")) == ["rendered"]
    assert (share.outputs / "term" / "big.mp4").exists()
    upload = Daemon(share, "upload")
    try:
        links = wait_for(lambda: done(share, "term"), 120, "upload finished after restart", upload)
    finally:
        upload.terminate()
    finished = [e for e in upload.events() if e["event"] == "upload_done"]
    assert finished[0]["sent_parts"] == parts - kept, "parts finished before SIGTERM were sent again"
    assert hashlib.sha256(fetch(links["videos"][0]["url"])).hexdigest() == links["videos"][0]["sha256"]
