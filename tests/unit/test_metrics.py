"""Metrics are a view of the ledger: counted in the same transaction as the change they count, written as a
Prometheus textfile by the reconciler (exposition format, atomic, rate-limited, one file for every worker)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import structlog

from daemon.ops.metrics import FILE_NAME, MetricsFile
from daemon.reconcile import Reconciler
from daemon.store import Effect, JobStore, Rendered
from tests.unit.test_store_links import manifest

SAMPLE = re.compile(r'^([a-z_]+)(?:\{([a-z]+)="((?:[^"\\]|\\.)*)"\})? (\d+(?:\.\d+)?)$')


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
        name, _label, value, number = match.groups()
        result[(name, value or "")] = float(number)
    return result


@pytest.fixture
def store(tmp_path: Path, ledger_url: str | None) -> JobStore:
    return JobStore(tmp_path / "state", url=ledger_url)


def reconciler(store: JobStore, tmp_path: Path, metrics: MetricsFile | None) -> Reconciler:
    return Reconciler(store, outputs_dir=tmp_path / "outputs", locks_dir=tmp_path / "locks", metrics=metrics)


def one_job_through(store: JobStore, tmp_path: Path) -> None:
    """`promo`: a.mp4 rendered (96 frames) and shared (5 bytes) after one failed upload; b.mp4 fails to
    render; the job ends partial."""
    store.add_job(manifest(tmp_path, "a.mp4", "b.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    store.start_job("promo")
    store.claim_video("promo", "a.mp4")
    store.video_rendered("promo", "a.mp4", Rendered(96, 0, 5, "ab" * 32, "m", 3.8, None))
    store.claim_video("promo", "b.mp4")
    store.fail_video("promo", "b.mp4", "no face")
    store.complete_job("promo")
    store.start_upload("promo", "a.mp4", "p/promo/a.mp4")
    store.upload_failed("promo", "a.mp4", "storage down", time.time())
    store.start_upload("promo", "a.mp4", "p/promo/a.mp4")
    store.video_ready("promo", "a.mp4", "https://x/a", 1e10)
    store.finish_job("promo")


def test_every_change_is_counted_in_the_ledger_and_written_as_one_textfile(
    store: JobStore, tmp_path: Path
) -> None:
    one_job_through(store, tmp_path)
    assert store.pending(Effect.METRICS), "each counted change asks for the file to be rewritten"
    folder = tmp_path / "textfile"
    reconciler(store, tmp_path, MetricsFile(folder, min_interval=0)).reconcile()
    got = samples(folder / FILE_NAME)
    assert got[("lipsyncd_jobs_total", "queued")] == 1
    assert got[("lipsyncd_jobs_total", "rendering")] == 1
    assert got[("lipsyncd_jobs_total", "rendered")] == 1
    assert got[("lipsyncd_jobs_total", "partial")] == 1
    assert ("lipsyncd_jobs_total", "done") not in got
    assert got[("lipsyncd_frames_total", "")] == 96
    assert got[("lipsyncd_upload_bytes_total", "")] == 5
    assert got[("lipsyncd_failures_total", "render")] == 1
    assert got[("lipsyncd_failures_total", "upload")] == 1
    assert store.pending(Effect.METRICS) == []
    text = (folder / FILE_NAME).read_text()
    assert "# TYPE lipsyncd_jobs_total counter" in text
    assert oct((folder / FILE_NAME).stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in folder.iterdir()] == [FILE_NAME]  # no temp files left


def test_counts_survive_a_restart_and_add_up_across_processes(store: JobStore, tmp_path: Path) -> None:
    """Two store handles stand for two worker processes (or a process before and after a restart)."""
    one_job_through(store, tmp_path)
    other = JobStore(tmp_path / "state", url=store.url)
    other.add_job(
        manifest(tmp_path, "c.mp4", name="next"), claimed_path=tmp_path / "n.yaml", base_dir=tmp_path
    )
    store.close()
    again = JobStore(tmp_path / "state", url=store.url)
    assert again.counters()[("lipsyncd_jobs_total", "queued")] == 2
    assert again.counters()[("lipsyncd_frames_total", "")] == 96


def test_a_rolled_back_change_counts_nothing(store: JobStore, tmp_path: Path) -> None:
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    store.start_job("promo")
    store.claim_video("promo", "a.mp4")

    def publish_fails() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.video_rendered(
            "promo", "a.mp4", Rendered(96, 0, 5, "ab" * 32, "m", 3.8, None), publish=publish_fails
        )
    assert ("lipsyncd_frames_total", "") not in store.counters()


def test_the_file_is_rewritten_at_most_every_min_interval_and_a_clean_stop_catches_up(
    store: JobStore, tmp_path: Path
) -> None:
    clock = ManualClock()
    folder = tmp_path / "textfile"
    applier = reconciler(store, tmp_path, MetricsFile(folder, min_interval=5, clock=clock))
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    applier.reconcile()
    assert samples(folder / FILE_NAME)[("lipsyncd_jobs_total", "queued")] == 1
    store.start_job("promo")
    applier.reconcile()
    assert ("lipsyncd_jobs_total", "rendering") not in samples(folder / FILE_NAME), "too soon"
    assert store.pending(Effect.METRICS), "the request waits for a later pass"
    clock.now += 5
    applier.reconcile()
    assert samples(folder / FILE_NAME)[("lipsyncd_jobs_total", "rendering")] == 1
    store.cancel_job("promo", "stopped by hand")
    applier.final_pass()  # a clean stop: whatever the interval
    assert samples(folder / FILE_NAME)[("lipsyncd_jobs_total", "cancelled")] == 1


def test_zero_counters_appear_on_the_first_write(tmp_path: Path) -> None:
    metrics = MetricsFile(tmp_path)
    assert metrics.write({})
    assert samples(tmp_path / FILE_NAME)[("lipsyncd_frames_total", "")] == 0


def test_label_values_are_escaped(tmp_path: Path) -> None:
    MetricsFile(tmp_path).write({("lipsyncd_failures_total", 'odd "stage"\\with\nnewline'): 1})
    assert (
        samples(tmp_path / FILE_NAME)[("lipsyncd_failures_total", 'odd \\"stage\\"\\\\with\\nnewline')] == 1
    )


def test_an_unwritable_place_is_logged_once_and_the_request_stays_pending(
    store: JobStore, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    applier = reconciler(store, tmp_path, MetricsFile(blocker, min_interval=0))
    with structlog.testing.capture_logs() as logs:
        store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
        applier.reconcile()
        store.start_job("promo")
        applier.reconcile()
    assert [e["event"] for e in logs if e["event"].startswith("metrics")] == ["metrics_write_failed"]
    assert store.pending(Effect.METRICS), "written once the place is writable again"
    assert store.counters()[("lipsyncd_jobs_total", "rendering")] == 1


def test_without_a_metrics_folder_the_requests_are_dropped(store: JobStore, tmp_path: Path) -> None:
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    reconciler(store, tmp_path, None).reconcile()
    assert store.pending(Effect.METRICS) == []
    assert store.counters()[("lipsyncd_jobs_total", "queued")] == 1
