"""links.html rendering: pure, everything escaped, unknown states shown plainly."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from typing import Any

from daemon.linkspage import duration_text, render_page, size_text

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>.mp4'


def view(*videos: dict[str, Any], **job: Any) -> dict[str, Any]:
    base = {"job": "promo", "manifest": "promo.yaml", "status": "done", "error": None}
    return {**base, **job, "videos": list(videos)}


def video(**fields: Any) -> dict[str, Any]:
    base = {
        "output": "anchor.mp4",
        "source": "media/anchor.mp4",
        "status": "ready",
        "progress": 1.0,
        "error": None,
        "size": 2_400_000,
        "duration_s": 75.4,
        "url": "https://s3.example.com/b/promo/anchor.mp4?X-Amz-Signature=ab&X-Amz-Expires=60",
        "expires_at": "2026-12-03T08:00:00Z",
        "local_copy": False,
    }
    return {**base, **fields}


class Tags(HTMLParser):
    """Every start tag and its attributes, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def test_hostile_names_and_errors_do_not_inject_markup() -> None:
    page = render_page(
        view(
            video(output=HOSTILE, source=HOSTILE, status="failed", error=HOSTILE, url=None),
            job=HOSTILE,
            manifest=HOSTILE,
            error=HOSTILE,
            summary=HOSTILE,
            warning=HOSTILE,
        )
    )
    found = tags(page)
    assert [t for t, _ in found].count("script") == 1  # only the page's own script
    assert not [t for t, _ in found if t == "img"]  # no injected <img> (and no poster given)
    assert not any(name.startswith("on") for _, attrs in found for name in attrs)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text, not dropped


def test_only_web_links_become_buttons() -> None:
    page = render_page(view(video(url="javascript:alert(1)//"), video(output="b.mp4", url='https://x/"y')))
    hrefs = [a.get("href") for t, a in tags(page) if t == "a"]
    assert hrefs == ['https://x/"y']  # the quote is escaped inside the attribute and read back whole
    copy = [a["data-url"] for t, a in tags(page) if t == "button"]
    assert copy == ['https://x/"y']


def test_ready_video_shows_facts_buttons_and_local_time_hook() -> None:
    page = render_page(view(video()), {"anchor.mp4": b"\xff\xd8jpeg"})
    found = dict((t, a) for t, a in tags(page) if t in ("img", "time", "a", "button"))
    assert found["img"]["src"] == "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8jpeg").decode()
    assert found["time"]["datetime"] == "2026-12-03T08:00:00Z"  # the script formats it in local time
    assert found["a"]["href"] == video()["url"]
    assert found["a"]["download"] == "anchor.mp4"
    assert found["button"]["data-url"] == video()["url"]
    assert "Length <b>1:15</b>" in page
    assert "Size <b>2.4 MB</b>" in page
    assert "Ready" in page


def test_failure_unknown_status_summary_and_warning_are_shown() -> None:
    page = render_page(
        view(
            video(status="failed", error="the video anchor.mp4 has no audio track", url=None),
            video(output="b.mp4", status="partial_upload", url=None, warning="12 frames had no face"),
            status="partial",
            summary="1 of 2 ready",
        )
    )
    assert "This video could not be made: the video anchor.mp4 has no audio track" in page
    assert ">Partial upload<" in page  # an unknown state in plain words, not dropped
    assert ">Partly done<" in page
    assert "1 of 2 ready" in page
    assert "12 frames had no face" in page
    assert not [t for t, _ in tags(page) if t in ("a", "button")]  # no links to offer


def test_progress_is_rounded_down_and_local_files_are_linked_relatively() -> None:
    page = render_page(view(video(status="rendering", progress=0.999, url=None)))
    assert 'value="99"' in page
    page = render_page(view(video(output="主播 1.mp4", status="rendered", url=None, local_copy=True)))
    assert [a["href"] for t, a in tags(page) if t == "a"] == ["%E4%B8%BB%E6%92%AD%201.mp4"]


def test_figures_in_words() -> None:
    assert [duration_text(s) for s in (0.4, 59.6, 75, 3725)] == ["0:00", "1:00", "1:15", "1:02:05"]
    assert [size_text(n) for n in (999, 1500, 2_400_000, 3_100_000_000)] == [
        "999 bytes",
        "1.5 kB",
        "2.4 MB",
        "3.1 GB",
    ]
