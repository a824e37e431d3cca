"""The Prometheus textfile: exposition format, atomic replacement, rate limit, thread safety."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import structlog

from daemon.ops.metrics import Metrics

SAMPLE = re.compile(r'^([a-z_]+)\{daemon="([^"]*)"(?:,([a-z]+)="((?:[^"\\]|\\.)*)")?\} (\d+(?:\.\d+)?)$')


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def samples(path: Path) -> dict[tuple[str, str], float]:
    """Parses the text format strictly: every line is a HELP/TYPE comment or a well-formed sample."""
    result: dict[tuple[str, str], float] = {}
    for line in path.read_text().splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        name, _daemon, _label, value, number = match.groups()
        result[(name, value or "")] = float(number)
    return result


def test_counters_are_written_in_text_format(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "lipsyncd-render.prom"
    metrics = Metrics(path, "render", min_interval=0)
    metrics.job("queued")
    metrics.job("queued")
    metrics.job("done")
    metrics.frames(96)
    metrics.failure("encode")
    metrics.upload_bytes(1024)
    got = samples(path)
    assert got[("lipsyncd_jobs_total", "queued")] == 2
    assert got[("lipsyncd_jobs_total", "done")] == 1
    assert got[("lipsyncd_frames_total", "")] == 96
    assert got[("lipsyncd_upload_bytes_total", "")] == 1024
    assert got[("lipsyncd_failures_total", "encode")] == 1
    text = path.read_text()
    assert "# TYPE lipsyncd_jobs_total counter" in text
    assert 'daemon="render"' in text
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["lipsyncd-render.prom"]  # no temp files left


def test_zero_counters_appear_on_the_first_flush(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    assert Metrics(path, "upload").flush()
    assert samples(path)[("lipsyncd_frames_total", "")] == 0


def test_writes_at_most_every_min_interval_and_flush_catches_up(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "m.prom"
    metrics = Metrics(path, "render", min_interval=5, clock=clock)
    metrics.frames(1)  # first write happens at once
    metrics.frames(1)
    assert samples(path)[("lipsyncd_frames_total", "")] == 1
    assert not metrics.flush()  # too soon
    clock.now += 5
    assert metrics.flush()
    assert samples(path)[("lipsyncd_frames_total", "")] == 2
    assert not metrics.flush()  # nothing changed
    metrics.frames(3)
    metrics.close()  # forced, whatever the interval
    assert samples(path)[("lipsyncd_frames_total", "")] == 5


def test_label_values_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    metrics = Metrics(path, "render", min_interval=0)
    metrics.failure('odd "stage"\\with\nnewline')
    assert samples(path)[("lipsyncd_failures_total", 'odd \\"stage\\"\\\\with\\nnewline')] == 1


def test_counts_from_many_threads_add_up(tmp_path: Path) -> None:
    metrics = Metrics(tmp_path / "m.prom", "render", min_interval=0)

    def work() -> None:
        for _ in range(200):
            metrics.frames(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics.close()
    assert metrics.value("lipsyncd_frames_total") == 800
    assert samples(tmp_path / "m.prom")[("lipsyncd_frames_total", "")] == 800


def test_unwritable_place_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    metrics = Metrics(blocker / "m.prom", "render", min_interval=0)
    with structlog.testing.capture_logs() as logs:
        metrics.job("done")
        metrics.job("done")
    assert [e["event"] for e in logs] == ["metrics_write_failed"]
    assert metrics.value("lipsyncd_jobs_total", "done") == 2


def test_no_path_counts_without_writing() -> None:
    metrics = Metrics(None, "render")
    metrics.frames(5)
    assert not metrics.flush(force=True)
    assert metrics.value("lipsyncd_frames_total") == 5
