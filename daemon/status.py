"""`lipsyncd status`: jobs and their videos from the store, as rich progress bars or JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from daemon.links import job_view
from daemon.store import JobStore

FINISHED = ("done", "partial", "failed")
_STYLE = {"ready": "green", "rendered": "cyan", "failed": "red", "rendering": "yellow", "uploading": "blue"}
_JOB_STYLE = {"done": "green", "partial": "yellow", "failed": "red"}


def job_documents(store: JobStore, job_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    jobs = [j for j in store.jobs() if job_id in (None, j.id)][-limit:]
    return [job_view(job, store.videos(job.id)) for job in jobs]


def print_json(documents: list[dict[str, Any]]) -> None:
    print(json.dumps(documents, ensure_ascii=False, indent=2))


def print_table(documents: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    if not documents:
        console.print("No jobs yet. Drop a manifest into the inbox, or use `lipsyncd submit`.")
        return
    console.print(_table(documents))
    for doc in documents:  # the reasons in full: the table cuts them short
        if doc.get("problems"):
            console.print(f"{doc['job']} ({doc['status']}, {doc['summary']}):", markup=False)
            for problem in doc["problems"]:
                console.print(f"  - {problem}", markup=False, soft_wrap=True)


def watch(read: Callable[[], list[dict[str, Any]]], every: float = 1.0) -> None:
    """Live progress bars until every job shown has finished (Ctrl-C to leave earlier)."""
    with Live(_table(read()), refresh_per_second=4) as live:
        while True:
            documents = read()
            live.update(_table(documents))
            if all(doc["status"] in FINISHED for doc in documents):
                return
            time.sleep(every)


def _table(documents: list[dict[str, Any]]) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    for column in ("job", "video", "status", "progress", "link / error"):
        table.add_column(column)
    for doc in documents:
        for video in doc["videos"]:
            status = video["status"]
            bar = ProgressBar(
                total=1.0, completed=1.0 if status in ("rendered", "ready") else video["progress"], width=20
            )
            warning = video.get("warning") and f"warning: {video['warning']}"
            note = video["error"] or warning or video["url"] or ""
            table.add_row(doc["job"], video["output"], f"[{_STYLE.get(status, '')}]{status}", bar, note[:80])
        if len(doc["videos"]) > 1 or doc["status"] == "partial":
            table.add_row(
                doc["job"], "", f"[{_JOB_STYLE.get(doc['status'], '')}]{doc['status']}", "", doc["summary"]
            )
    return table
