"""`lipsyncd status`: jobs and their videos from the store, as rich progress bars or JSON, and the
manifests the inbox refused (filed under failed/ without becoming a job) with their reasons."""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from daemon.config import parse_duration
from daemon.links import iso, job_view
from daemon.manifest import MANIFEST_SUFFIXES
from daemon.store import JobStore

REFUSED = "refused"
# states with work still to come; any other state, known or added later, counts as finished
ACTIVE = ("queued", "rendering", "rendered", "uploading")
_STYLE = {
    **{"ready": "green", "rendered": "cyan", "failed": "red", "rendering": "yellow", "uploading": "blue"},
    **{"done": "green", "partial": "yellow", "cancelled": "magenta", REFUSED: "red"},
}
_SHORT = 80  # characters of an error shown without --full


@dataclass(frozen=True)
class Filter:
    job: str | None = None
    failed: bool = False  # only jobs with a failure, and refused manifests
    since: float | None = None  # epoch seconds: only what changed since


def parse_since(text: str, now: float | None = None) -> float:
    """'2h', '30m', '1d' ago, or an ISO date/time ('2026-12-01', '2026-12-01T08:00'; UTC if no zone)."""
    try:
        return (now if now is not None else time.time()) - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a duration (2h, 30m, 1d) or an ISO date (2026-12-01)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def job_documents(store: JobStore, job_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    jobs = [j for j in store.jobs() if job_id in (None, j.id)][-limit:]
    return [job_view(job, store.videos(job.id)) for job in jobs]


def refused_documents(failed_dir: Path) -> list[dict[str, Any]]:
    """Manifests the inbox refused: failed/NAME.error.txt written at intake (a job's own failure report,
    which also lands there, says 'could not render' and is shown with its job instead)."""
    if not failed_dir.is_dir():
        return []
    found = (refused_document(report) for report in sorted(failed_dir.glob("*.error.txt")))
    return [document for document in found if document is not None]


def refused_document(report: Path) -> dict[str, Any] | None:
    """One failed/NAME.error.txt as a refused manifest's view; None if it is gone or a job's own report."""
    try:
        text = report.read_text(encoding="utf-8", errors="replace")
        changed = report.stat().st_mtime
    except OSError:
        return None  # removed while we looked, or never there
    if text.startswith("lipsyncd could not render"):
        return None
    failed_dir, stem = report.parent, report.name.removesuffix(".error.txt")
    named = failed_dir.glob(f"{glob.escape(stem)}.*")
    beside = [p.name for p in named if p.suffix.lower() in MANIFEST_SUFFIXES]
    return {
        "job": None,
        "manifest": beside[0] if beside else stem,
        "status": REFUSED,
        "error": _reasons(text),
        "error_file": str(report),
        "updated_at": iso(changed),
        "videos": [],
    }


def _reasons(report: str) -> str:
    """The 'What is wrong' lines of an error file, one reason per line."""
    lines = report.splitlines()
    if "What is wrong:" not in lines:
        return report.strip()
    reasons = []
    for line in lines[lines.index("What is wrong:") + 1 :]:
        if not line.strip():
            break
        reasons.append(line.strip().removeprefix("- "))
    return "\n".join(reasons)


def select(documents: list[dict[str, Any]], only: Filter) -> list[dict[str, Any]]:
    return [doc for doc in documents if _wanted(doc, only)]


def _wanted(doc: dict[str, Any], only: Filter) -> bool:
    if only.failed and not _has_failure(doc):
        return False
    if only.since is not None:
        changed = doc.get("updated_at")
        if changed is None or datetime.fromisoformat(changed.replace("Z", "+00:00")).timestamp() < only.since:
            return False
    return True


def _has_failure(doc: dict[str, Any]) -> bool:
    return doc["status"] in ("failed", "partial", REFUSED) or any(
        v["status"] == "failed" for v in doc["videos"]
    )


def print_json(documents: list[dict[str, Any]]) -> None:
    print(json.dumps(documents, ensure_ascii=False, indent=2))


def print_table(
    documents: list[dict[str, Any]], console: Console | None = None, *, full: bool = False
) -> None:
    console = console or Console()
    if not documents:
        console.print("No jobs yet. Drop a manifest into the inbox, or use `lipsyncd submit`.")
        return
    console.print(_table(documents, full=full))
    for doc in documents:  # each job's failures and warnings, one per line (cut like the table's)
        if doc.get("problems"):
            console.print(f"{doc['job']} ({doc['status']}, {doc['summary']}):", markup=False)
            for problem in doc["problems"]:
                console.print(Text("  - ") + _error(problem, full), soft_wrap=True)
    links = [(doc["job"], v["output"], v["url"]) for doc in documents for v in doc["videos"] if v.get("url")]
    if links:  # whole, one per line, never wrapped: they are there to be copied
        console.print("\nLinks:")
        for job, output, url in links:
            console.print(Text(f"{job}/{output}  {url}"), soft_wrap=True)


def watch(read: Callable[[], list[dict[str, Any]]], every: float = 1.0) -> None:
    """Live progress bars until every job shown has finished (Ctrl-C to leave earlier)."""
    with Live(_table(read()), refresh_per_second=4) as live:
        while True:
            documents = read()
            live.update(_table(documents))
            if all(finished(doc) for doc in documents):
                return
            time.sleep(every)


def finished(doc: dict[str, Any]) -> bool:
    return doc["status"] not in ACTIVE


def _table(documents: list[dict[str, Any]], *, full: bool = False) -> Group:
    table = Table(show_header=True, header_style="bold", expand=False)
    for column in ("job", "video", "status", "progress", "worker", "error / link"):
        table.add_column(column, overflow="fold")
    for doc in documents:
        job = doc["job"] or f"(not a job) {doc['manifest']}"
        # the job's own row: its state, overall progress, and why it failed (or its summary)
        # a partial job's error lists its failures: they are printed whole under the table
        plain = doc["status"] == "partial" or not doc.get("error")
        note = Text(str(doc.get("summary") or "")) if plain else _error(doc["error"], full)
        table.add_row(Text(job), Text("-"), _status(doc["status"]), _job_progress(doc), Text(""), note)
        for video in doc["videos"]:
            status = video["status"]
            table.add_row(
                Text(""),
                Text(video["output"]),
                _status(status),
                _progress(_fraction(status, video.get("progress") or 0.0)),
                Text(video.get("worker") or "", style="dim"),
                _note(video, full),
            )
    cut = not full and any(len(e) > _SHORT for e in _errors(documents))
    hint = Text(f"errors are cut at {_SHORT} characters: --full shows them whole" if cut else "", style="dim")
    return Group(table, hint)


def _errors(documents: list[dict[str, Any]]) -> list[str]:
    found = [doc.get("error") for doc in documents]
    found += [v.get("error") for doc in documents for v in doc["videos"]]
    return [e for e in found if e]


def _note(video: dict[str, Any], full: bool) -> Text:
    if video.get("error"):
        return _error(video["error"], full)
    if video.get("warning"):
        return _error(f"warning: {video['warning']}", full)
    return Text("link below" if video.get("url") else "")


def _status(status: str) -> Text:
    return Text(status, style=_STYLE.get(status, ""))  # Text, not markup: "[]queued" was rich eating it


def _fraction(status: str, progress: float) -> float:
    return 1.0 if status in ("rendered", "uploading", "ready") else progress


def _job_progress(doc: dict[str, Any]) -> Table | Text:
    videos = doc["videos"]
    if not videos:
        return Text("")
    return _progress(sum(_fraction(v["status"], v.get("progress") or 0.0) for v in videos) / len(videos))


def _progress(done: float) -> Table:
    cell = Table.grid(padding=(0, 1))
    cell.add_row(ProgressBar(total=1.0, completed=done, width=20), Text(f"{done:4.0%}"))
    return cell


def _error(error: str, full: bool) -> Text:
    if full or len(error) <= _SHORT:
        return Text(error)
    return Text(error[: _SHORT - 1] + "…")
