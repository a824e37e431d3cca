"""The worker registry: rows registered, beaten and stopped by each worker process, and how `lipsyncd hosts`
reads them (stale after three lease periods of silence; what each holds now)."""

from __future__ import annotations

import io
import itertools
import json
import os
import threading
import time
from pathlib import Path

import structlog

from daemon.hosts import STALE, summary, worker_views
from daemon.lease import host_name
from daemon.ops.logging import bind_process, configure_logging
from daemon.store import Held, JobStore, WorkerRow
from daemon.workers import Presence, beat_period


def wait(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_register_beat_and_clean_stop(tmp_path: Path, ledger_url: str | None) -> None:
    store = JobStore(tmp_path, url=ledger_url)
    presence = Presence.start(store, "h:render@0", "render", lease_s=0.3)  # beats every 0.1 s
    [row] = store.workers()
    assert (row.name, row.host, row.kind, row.pid, row.state) == (
        "h:render@0",
        host_name(),
        "render",
        os.getpid(),
        "running",
    )
    assert row.last_beat == row.started
    beaten = wait(lambda: (r := store.workers()[0]).last_beat > row.last_beat and r)
    assert beaten.state == "running"
    presence.stop(clean=True)
    [stopped] = store.workers()
    assert stopped.state == "stopped"
    assert stopped.last_beat >= beaten.last_beat
    time.sleep(0.3)
    assert store.workers() == [stopped], "no beat after the stop"


def test_a_failed_stop_leaves_the_row_running_to_turn_stale(tmp_path: Path, ledger_url: str | None) -> None:
    store = JobStore(tmp_path, url=ledger_url)
    Presence.start(store, "h:upload@1", "upload", lease_s=30).stop(clean=False)
    assert [r.state for r in store.workers()] == ["running"]


def test_a_restart_replaces_the_row(tmp_path: Path, ledger_url: str | None) -> None:
    store = JobStore(tmp_path, url=ledger_url)
    store.register_worker("h:render@0", "h", "render", 111)
    store.worker_stopped("h:render@0")
    store.register_worker("h:render@0", "h", "render", 222)
    assert [(r.pid, r.state) for r in store.workers()] == [(222, "running")]


def test_one_write_per_beat_period_not_more() -> None:
    writes: list[float] = []

    class Counting:
        def register_worker(self, *args: object) -> None:
            pass

        def worker_beat(self, name: str) -> None:
            writes.append(time.monotonic())

        def worker_stopped(self, name: str) -> None:
            pass

    start = time.monotonic()
    presence = Presence.start(Counting(), "h:render@0", "render", lease_s=0.3)  # type: ignore[arg-type]
    wait(lambda: len(writes) >= 3)
    presence.stop(clean=True)
    elapsed = time.monotonic() - start
    assert len(writes) <= elapsed / 0.1 + 1
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(writes))


def test_beat_period_is_a_few_seconds_and_several_per_lease() -> None:
    assert beat_period(60) == 5.0
    assert beat_period(3) == 1.0


def row(name: str, last_beat: float, state: str = "running", kind: str = "render") -> WorkerRow:
    return WorkerRow(name, name.split(":")[0], kind, 1, 0.0, last_beat, state)


def test_stale_after_three_lease_periods_of_silence() -> None:
    now = 1000.0
    rows = [
        row("a:render@0", now - 30),  # exactly 3 leases of 10 s: not yet
        row("a:render@1", now - 30.5),
        row("b:render@0", now - 500, state="stopped"),  # stopped cleanly: never stale
        row("b:upload@0", now - 50, kind="upload"),  # the upload lease is 20 s: 60 s allowed
    ]
    views = worker_views(rows, [], {"render": 10.0, "upload": 20.0}, now)
    assert [v.state for v in views] == ["running", STALE, "stopped", "running"]
    assert [v.beat_age_s for v in views] == [30.0, 30.5, 500.0, 50.0]
    line = summary(views)
    assert line.startswith(
        "Workers: 2 running on 2 host(s); 1 stale: a:render@1 (last beat 30s ago); 1 stopped"
    )


def test_holds_are_the_videos_under_each_workers_claim() -> None:
    held = [
        Held("a:render@0", "promo", "v1.mp4", "rendering", 1012.0),
        Held("a:render@0", "promo", "v2.mp4", "rendering", 995.0),
        Held("a:upload@0", "promo", "v0.mp4", "uploading", 1030.0),
    ]
    [view] = worker_views([row("a:render@0", 999.0)], held, {"render": 10.0}, 1000.0)
    assert [(h.job, h.video, h.lease_left_s) for h in view.holds] == [
        ("promo", "v1.mp4", 12.0),
        ("promo", "v2.mp4", -5.0),
    ]


def test_process_fields_reach_events_of_every_thread() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    bind_process(host="gpu-7", worker="gpu-7:render@1")
    thread = threading.Thread(target=lambda: structlog.get_logger("t").info("from_a_thread"))
    thread.start()
    thread.join()
    structlog.get_logger("t").info("own_host", host="elsewhere")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["host"], first["worker"]) == ("gpu-7", "gpu-7:render@1")
    assert (second["host"], second["worker"]) == ("elsewhere", "gpu-7:render@1")
