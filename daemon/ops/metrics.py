"""The Prometheus textfile for node_exporter's textfile collector: a view of the ledger's counters.

The counts live in the job store (`JobStore._count`), added in the same transaction as the change they
count, so every worker process counts into one place and a crash never loses or doubles one. Each change
asks for Effect.METRICS; the reconciler of any process then rewrites `lipsyncd.prom` from the store's
counters (atomically: node_exporter reads only *.prom, and never half a file), at most every
`min_interval` seconds; a request that comes sooner stays pending for a later pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from daemon.files import write_atomic

log = structlog.get_logger(__name__)

FILE_NAME = "lipsyncd.prom"

# name -> (help text, label name or "" for a plain counter)
METRICS = {
    "lipsyncd_jobs_total": ("Jobs that reached each state.", "state"),
    "lipsyncd_frames_total": ("Video frames rendered.", ""),
    "lipsyncd_upload_bytes_total": ("Bytes uploaded to object storage.", ""),
    "lipsyncd_failures_total": ("Video failures, by the stage that failed (render, upload).", "stage"),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_textfile(counts: Mapping[tuple[str, str], int], updated: float) -> str:
    """The exposition text: every family with HELP/TYPE, even when still zero."""
    lines = []
    for name, (text, label) in METRICS.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
        samples = sorted((lv, n) for (metric, lv), n in counts.items() if metric == name)
        if not label:
            samples = [("", sum(n for _, n in samples))]
        for label_value, number in samples:
            lines.append(
                f'{name}{{{label}="{_escape(label_value)}"}} {number}' if label else f"{name} {number}"
            )
    lines += ["# HELP lipsyncd_metrics_updated_seconds When this file was written (Unix time)."]
    lines += ["# TYPE lipsyncd_metrics_updated_seconds gauge"]
    lines.append(f"lipsyncd_metrics_updated_seconds {updated:.3f}")
    return "\n".join(lines) + "\n"


class MetricsFile:
    """Where the textfile goes and how often it may be rewritten; the reconciler calls write()."""

    def __init__(
        self, folder: Path, *, min_interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = folder / FILE_NAME
        self._min_interval = min_interval
        self._clock = clock
        self._last_write = float("-inf")
        self._failing = False

    def due(self) -> bool:
        return self._clock() - self._last_write >= self._min_interval

    def hurry(self) -> None:
        """The next write is due whatever the interval (a clean stop writes the last counts)."""
        self._last_write = float("-inf")

    def write(self, counts: Mapping[tuple[str, str], int]) -> bool:
        """Replace the file; False when it cannot be written now (logged once per outage: metrics must
        never stop the work they count, and the request stays pending for a later pass)."""
        self._last_write = self._clock()
        try:  # 0644: node_exporter runs as another user; no fsync: rewritten every few seconds anyway
            write_atomic(self.path, render_textfile(counts, time.time()), mode=0o644, fsync=False)
        except OSError as exc:
            if not self._failing:
                log.warning("metrics_write_failed", path=str(self.path), error=str(exc))
            self._failing = True
            return False
        self._failing = False
        return True
