"""links.html: the job's links.json view as a page a person can open from the shared folder.

Pure: a view dict (daemon.links.job_view) and the poster JPEGs in, one HTML string out. Self-contained
(inline CSS and JS, posters as data: URIs) so it works from file://, after the videos are evicted and when
uploaded alone. Every value from the view is escaped; links are used only if they are http(s). The script
is a constant: it reads what it needs from data- attributes, never from text pasted into it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

PAGE_NAME = "links.html"

# Words for the states this version knows; any other status is shown as its own name, plainly.
_STATUS_WORDS = {
    "queued": "Waiting",
    "rendering": "Rendering",
    "rendered": "Rendered",
    "uploading": "Uploading",
    "ready": "Ready",
    "failed": "Failed",
    "done": "Done",
    "partial": "Partly done",
}
_BUSY = {"queued", "rendering", "rendered", "uploading"}

_CSS = """
:root{color-scheme:light;--ink:#1d2430;--soft:#5b6678;--line:#e3e7ee;--bg:#f5f7fa;--ok:#177245;
--okbg:#e3f4ea;--bad:#a42323;--badbg:#fbe7e7;--busy:#8a5a00;--busybg:#fdf2dc;--accent:#2459c7}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Noto Sans",sans-serif}
main{max-width:960px;margin:0 auto;padding:28px 20px 40px}
header h1{font-size:22px;margin:0 0 4px}
header p{margin:2px 0;color:var(--soft)}
.summary{font-weight:600;color:var(--ink)}
.notice{margin:14px 0;padding:10px 14px;border-radius:8px;background:var(--badbg);color:var(--bad);
white-space:pre-wrap;overflow-wrap:anywhere}
.notice.warn{background:var(--busybg);color:var(--busy)}
.videos{list-style:none;margin:20px 0 0;padding:0;display:grid;gap:14px}
.video{display:flex;gap:16px;background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px}
.poster{flex:0 0 240px;width:240px;aspect-ratio:16/9;border-radius:6px;background:#dfe3ea;object-fit:contain;
display:flex;align-items:center;justify-content:center;color:var(--soft);font-size:13px;align-self:flex-start}
.body{flex:1;min-width:0;overflow-wrap:anywhere}
img.poster{background:#1d2430}
.body h2{font-size:17px;margin:0 0 2px;overflow-wrap:anywhere}
.source{color:var(--soft);font-size:13px;margin:0 0 8px;overflow-wrap:anywhere}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:13px;font-weight:600;
background:#eceff4;color:var(--soft)}
.badge.ready,.badge.done{background:var(--okbg);color:var(--ok)}
.badge.failed{background:var(--badbg);color:var(--bad)}
.badge.busy,.badge.partial{background:var(--busybg);color:var(--busy)}
.facts{display:flex;flex-wrap:wrap;gap:4px 16px;margin:8px 0;color:var(--soft);font-size:14px}
.facts b{color:var(--ink);font-weight:600}
progress{width:100%;height:8px;margin:6px 0}
.actions{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-top:10px}
.btn{font:inherit;font-size:14px;padding:6px 14px;border-radius:6px;border:1px solid var(--accent);
background:#fff;color:var(--accent);cursor:pointer;text-decoration:none}
.btn.primary{background:var(--accent);color:#fff}
.copied{color:var(--ok);font-size:13px}
.manual{width:100%;font:12px monospace;margin-top:6px}
.reason{margin:8px 0 0;padding:8px 12px;border-radius:6px;background:var(--badbg);color:var(--bad)}
.warning{margin:8px 0 0;padding:8px 12px;border-radius:6px;background:var(--busybg);color:var(--busy)}
footer{margin-top:22px;color:var(--soft);font-size:13px}
@media (max-width:560px){.video{flex-direction:column}.poster{width:100%;flex-basis:auto}}
"""

# Times: shown in the reader's zone. Copy: the clipboard, else a selected box to copy from by hand.
_JS = """
for (const t of document.querySelectorAll("time[datetime]")) {
  const d = new Date(t.getAttribute("datetime"));
  if (!isNaN(d)) t.textContent = d.toLocaleString();
}
function shown(button, text) {
  const note = button.parentNode.querySelector(".copied");
  note.textContent = text;
}
function byHand(button, url) {
  let box = button.parentNode.querySelector(".manual");
  if (!box) {
    box = document.createElement("input");
    box.className = "manual";
    box.readOnly = true;
    button.parentNode.appendChild(box);
  }
  box.value = url;
  box.select();
  let done = false;
  try { done = document.execCommand("copy"); } catch (e) { done = false; }
  shown(button, done ? "Link copied" : "Press Ctrl+C (or \\u2318C) to copy the link");
}
for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", () => {
    const url = button.dataset.url;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(url).then(() => shown(button, "Link copied"), () => byHand(button, url));
    } else {
      byHand(button, url);
    }
  });
}
"""


def render_page(view: Mapping[str, Any], posters: Mapping[str, bytes] | None = None) -> str:
    """The whole page. `posters` maps a video's output name to its JPEG bytes (missing: a placeholder)."""
    posters = posters or {}
    job = _text(view.get("job"))
    videos = view.get("videos") or []
    items = "\n".join(_video_item(v, posters.get(str(v.get("output")))) for v in videos)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{_e(job)} \u2013 videos</title>\n"
        f"<style>{_CSS}</style></head>\n"
        f"<body><main>\n{_header(view)}\n"
        f'<ul class="videos">\n{items}\n</ul>\n'
        f"{_footer(view)}\n"
        f"</main><script>{_JS}</script></body></html>\n"
    )


def _header(view: Mapping[str, Any]) -> str:
    status = _text(view.get("status"))
    lines = [f"<header><h1>{_e(_text(view.get('job')))}</h1>"]
    lines.append(f"<p>Job {_badge(status)} \u00b7 from {_e(_text(view.get('manifest')))}</p>")
    if view.get("summary"):
        lines.append(f'<p class="summary">{_e(_text(view["summary"]))}</p>')
    if view.get("updated_at"):
        lines.append(f"<p>Last change: {_time(view['updated_at'])}</p>")
    lines.append("</header>")
    # a partial job's error only lists its failed videos, which their own cards explain
    if view.get("error") and view.get("status") != "partial":
        lines.append(f'<div class="notice" role="alert">{_e(_text(view["error"]))}</div>')
    if view.get("warning"):
        lines.append(f'<div class="notice warn">{_e(_text(view["warning"]))}</div>')
    return "\n".join(lines)


def _footer(view: Mapping[str, Any]) -> str:
    return (
        "<footer>Made by lipsyncd from links.json. Links stop working at the time shown; "
        "ask for new links after that.</footer>"
    )


def _video_item(video: Mapping[str, Any], poster: bytes | None) -> str:
    status = _text(video.get("status"))
    name = _text(video.get("output")) or "video"
    parts = [
        f'<li class="video" data-status="{_e(status)}">',
        _poster(name, poster, status),
        '<div class="body">',
        f"<h2>{_e(name)}</h2>",
        f'<p class="source">from {_e(_text(video.get("source")))}</p>',
        _badge(status),
        _progress(video, status),
        _facts(video),
    ]
    if video.get("error"):
        parts.append(f'<p class="reason">This video could not be made: {_e(_text(video["error"]))}</p>')
    if video.get("warning"):
        parts.append(f'<p class="warning">{_e(_text(video["warning"]))}</p>')
    parts += [_actions(video, name), "</div></li>"]
    return "\n".join(p for p in parts if p)


def _poster(name: str, jpeg: bytes | None, status: str) -> str:
    if not jpeg:
        words = "no picture" if status == "failed" else "no picture yet"
        return f'<div class="poster" aria-hidden="true">{words}</div>'
    data = base64.b64encode(jpeg).decode("ascii")
    return f'<img class="poster" alt="A frame of {_e(name)}" src="data:image/jpeg;base64,{data}">'


def _badge(status: str) -> str:
    words = _STATUS_WORDS.get(status, status.replace("_", " ").capitalize() or "Unknown")
    kind = "busy" if status in _BUSY else status
    return f'<span class="badge {_e(_css_word(kind))}" data-status="{_e(status)}">{_e(words)}</span>'


def _progress(video: Mapping[str, Any], status: str) -> str:
    if status not in ("rendering", "uploading"):
        return ""
    fraction = _number(video.get("progress")) or 0.0
    percent = max(0, min(100, int(fraction * 100)))  # rounded down: 100% only when it is done
    return f'<progress max="100" value="{percent}" aria-label="progress">{percent}%</progress> {percent}%'


def _facts(video: Mapping[str, Any]) -> str:
    facts = []
    duration = _number(video.get("duration_s"))
    if duration is not None:
        facts.append(f"<span>Length <b>{_e(duration_text(duration))}</b></span>")
    size = _number(video.get("size"))
    if size is not None:
        facts.append(f"<span>Size <b>{_e(size_text(int(size)))}</b></span>")
    if video.get("url") and video.get("expires_at"):
        facts.append(f"<span>Link works until <b>{_time(video['expires_at'])}</b></span>")
    return f'<div class="facts">{"".join(facts)}</div>' if facts else ""


def _actions(video: Mapping[str, Any], name: str) -> str:
    url = _web_url(video.get("url"))
    if url is not None:
        return (
            '<div class="actions">'
            f'<button type="button" class="btn copy" data-url="{_e(url)}">Copy link</button>'
            f'<a class="btn primary download" href="{_e(url)}" download="{_e(name)}">Download</a>'
            '<span class="copied" role="status"></span></div>'
        )
    if video.get("status") in ("rendered", "ready") and video.get("local_copy"):
        local = quote(name)  # the page sits beside the video: a relative link works from the folder
        return (
            f'<div class="actions"><a class="btn primary download" href="{_e(local)}" download>'
            "Open the file</a></div>"
        )
    return ""


def _web_url(value: Any) -> str | None:
    """Only http(s) links become buttons: a javascript: or data: link in the view is never clickable."""
    url = _text(value)
    return url if url.lower().startswith(("https://", "http://")) else None


def _time(iso_value: Any) -> str:
    value = _text(iso_value)
    return f'<time datetime="{_e(value)}">{_e(value.replace("T", " ").replace("Z", " UTC"))}</time>'


def duration_text(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def size_text(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _css_word(value: str) -> str:
    return "".join(c for c in value if c.isalnum() or c in "-_")


def _e(value: str) -> str:
    return html.escape(value, quote=True)
