"""Counters written as a Prometheus textfile for node_exporter's textfile collector.

Each daemon writes its own file (lipsyncd-render.prom, lipsyncd-upload.prom) with a `daemon` label, so
the two never overwrite each other. Writes are atomic (temp file + rename: node_exporter reads only
*.prom, and never half a file) and happen at most every `min_interval` seconds; call flush() from the
idle loop so the last counts reach the file, and close() at shutdown.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.files import write_atomic

log = structlog.get_logger(__name__)

# name -> (help text, label name or "" for a plain counter)
METRICS = {
    "lipsyncd_jobs_total": ("Jobs that reached each state.", "state"),
    "lipsyncd_frames_total": ("Video frames rendered.", ""),
    "lipsyncd_upload_bytes_total": ("Bytes uploaded to object storage.", ""),
    "lipsyncd_failures_total": ("Failures, by the stage that failed.", "stage"),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_textfile(counts: Counter[tuple[str, str]], daemon: str, updated: float) -> str:
    """The exposition text: every family with HELP/TYPE, even when still zero."""
    lines = []
    for name, (text, label) in METRICS.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
        samples = sorted((lv, n) for (metric, lv), n in counts.items() if metric == name)
        if not label:
            samples = [("", sum(n for _, n in samples))]
        for label_value, number in samples:
            extra = f',{label}="{_escape(label_value)}"' if label else ""
            lines.append(f'{name}{{daemon="{_escape(daemon)}"{extra}}} {number}')
    lines += ["# HELP lipsyncd_metrics_updated_seconds When this file was written (Unix time)."]
    lines += ["# TYPE lipsyncd_metrics_updated_seconds gauge"]
    lines.append(f'lipsyncd_metrics_updated_seconds{{daemon="{_escape(daemon)}"}} {updated:.3f}')
    return "\n".join(lines) + "\n"


class Metrics:
    """Thread-safe counters; path None turns writing off (the counters still count)."""

    def __init__(
        self,
        path: Path | None,
        daemon: str,
        *,
        min_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._daemon = daemon
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._dirty = True  # write the zero counters once, so dashboards see the daemon
        self._last_write = float("-inf")
        self._failing = False

    def job(self, state: str) -> None:
        self._add("lipsyncd_jobs_total", state)

    def frames(self, count: int) -> None:
        self._add("lipsyncd_frames_total", "", count)

    def upload_bytes(self, count: int) -> None:
        self._add("lipsyncd_upload_bytes_total", "", count)

    def failure(self, stage: str) -> None:
        self._add("lipsyncd_failures_total", stage)

    def value(self, name: str, label: str = "") -> int:
        with self._lock:
            return self._counts[(name, label)]

    def _add(self, name: str, label: str, count: int = 1) -> None:
        with self._lock:
            self._counts[(name, label)] += count
            self._dirty = True
        self.flush()

    def flush(self, *, force: bool = False) -> bool:
        """Write the file when something changed and min_interval has passed (or force). True if written."""
        with self._lock:  # held while writing, so an older snapshot can never replace a newer one
            now = self._clock()
            if self._path is None or not self._dirty:
                return False
            if not force and now - self._last_write < self._min_interval:
                return False
            self._last_write = now
            self._dirty = not self._write(
                self._path, render_textfile(self._counts, self._daemon, time.time())
            )
            return not self._dirty

    def close(self) -> None:
        self.flush(force=True)

    def _write(self, path: Path, text: str) -> bool:
        try:
            # 0644: node_exporter runs as another user; no fsync: rewritten every few seconds anyway
            write_atomic(path, text, mode=0o644, fsync=False)
        except OSError as exc:  # metrics must never stop the work they count
            if not self._failing:  # once per outage, not every few seconds
                log.warning("metrics_write_failed", path=str(path), error=str(exc))
            self._failing = True
            return False
        self._failing = False
        return True
