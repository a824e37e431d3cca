"""`lipsyncd hosts`: the worker registry as people read it. Each host and its workers, how long ago each
last beat, what each holds now (videos under its claim), and which are stale: running by their row but
silent for more than three lease periods (killed, frozen, or cut off from the store)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from daemon.config import Config
from daemon.links import iso
from daemon.store import WORKER_RUNNING, Held, JobStore, WorkerRow
from daemon.workers import STALE_LEASES

STALE = "stale"
_STYLE = {WORKER_RUNNING: "green", STALE: "red", "stopped": "dim"}


@dataclass(frozen=True)
class Holding:
    job: str
    video: str
    state: str
    lease_left_s: float  # negative: lapsed, another worker may take it


@dataclass(frozen=True)
class WorkerView:
    name: str
    host: str
    kind: str
    pid: int
    state: str  # running | stopped | stale
    started: str | None
    last_beat: str | None
    beat_age_s: float
    holds: list[Holding]


def lease_of(config: Config, kind: str) -> float:
    return config.upload.lease_seconds if kind == "upload" else config.render.lease_seconds


def worker_views(
    rows: list[WorkerRow], held: list[Held], leases: dict[str, float], now: float
) -> list[WorkerView]:
    """Rows and claims at `now`; `leases` maps a kind to its lease (seconds) for the stale test."""
    return [_view(row, held, leases.get(row.kind, 60.0), now) for row in rows]


def _view(row: WorkerRow, held: list[Held], lease_s: float, now: float) -> WorkerView:
    age = max(0.0, now - row.last_beat)
    state = STALE if row.state == WORKER_RUNNING and age > STALE_LEASES * lease_s else row.state
    holds = [
        Holding(h.job_id, h.output, h.state, round(h.lease_until - now, 1))
        for h in held
        if h.owner == row.name
    ]
    return WorkerView(
        row.name,
        row.host,
        row.kind,
        row.pid,
        state,
        iso(row.started),
        iso(row.last_beat),
        round(age, 1),
        holds,
    )


def read_views(store: JobStore, config: Config, now: float | None = None) -> list[WorkerView]:
    leases = {kind: lease_of(config, kind) for kind in ("render", "upload")}
    return worker_views(store.workers(), store.held_videos(), leases, store.clock() if now is None else now)


def hosts_document(views: list[WorkerView]) -> dict[str, Any]:
    hosts: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        hosts.setdefault(view.host, []).append(asdict(view))
    return {"hosts": [{"host": host, "workers": workers} for host, workers in hosts.items()]}


def print_json(views: list[WorkerView]) -> None:
    print(json.dumps(hosts_document(views), ensure_ascii=False, indent=2))


def print_table(views: list[WorkerView], console: Console | None = None) -> None:
    console = console or Console()
    if not views:
        console.print("No workers have registered yet: start `lipsyncd run`, or the render and upload units.")
        return
    table = Table(show_header=True, header_style="bold", expand=False)
    for column in ("host", "worker", "kind", "pid", "state", "last beat", "holds"):
        table.add_column(column, overflow="fold")
    host = None
    for view in views:
        table.add_row(
            Text(view.host if view.host != host else ""),
            Text(view.name),
            Text(view.kind),
            Text(str(view.pid)),
            Text(view.state, style=_STYLE.get(view.state, "")),
            Text(f"{age_text(view.beat_age_s)} ago"),
            Text("\n".join(_holding(h) for h in view.holds)),
        )
        host = view.host
    console.print(table)
    stale = [v for v in views if v.state == STALE]
    if stale:
        console.print(
            f"{len(stale)} stale worker(s): running by the store, but silent for more than {STALE_LEASES} "
            "lease periods (killed, frozen, or cut off). Their claims lapse; other workers take the videos.",
            style="red",
        )


def summary(views: list[WorkerView]) -> str:
    """One line for `lipsyncd status`: how many workers run where, and which are stale."""
    if not views:
        return "Workers: none registered yet."
    running = [v for v in views if v.state == WORKER_RUNNING]
    hosts = {v.host for v in running}
    line = f"Workers: {len(running)} running on {len(hosts)} host(s)"
    stale = [v for v in views if v.state == STALE]
    if stale:
        named = ", ".join(f"{v.name} (last beat {age_text(v.beat_age_s)} ago)" for v in stale)
        line += f"; {len(stale)} stale: {named}"
    stopped = len(views) - len(running) - len(stale)
    if stopped:
        line += f"; {stopped} stopped"
    return line + ". `lipsyncd hosts` shows them all."


def _holding(h: Holding) -> str:
    lease = f"lease {h.lease_left_s:.0f}s left" if h.lease_left_s >= 0 else "lease lapsed"
    return f"{h.job}/{h.video} ({h.state}, {lease})"


def age_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
