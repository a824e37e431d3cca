"""What the figures were measured on, and whether something else was using the CPU meanwhile.

The machine description starts from helper D's `bench/model_speed.py` (CPU model, cores, GPU,
onnxruntime and its providers) and adds memory and the media stack's versions.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from daemon.bench.modelonly import model_speed


def describe_machine() -> dict[str, Any]:
    described: dict[str, Any] = dict(model_speed().machine())
    described.update(
        ram_gib=round(_meminfo_kib("MemTotal") / 2**20, 1),
        load_average=[round(x, 2) for x in os.getloadavg()],
        pyav=av.__version__,
        ffmpeg_libavcodec=_libavcodec(),
        opencv=cv2.__version__,
        numpy=np.__version__,
        commit=_git_commit(),
    )
    return described


def _meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _libavcodec() -> str:
    major, minor, micro = av.library_versions.get("libavcodec", (0, 0, 0))
    return f"{major}.{minor}.{micro}"


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=5
        )
    except OSError:
        return None
    return done.stdout.strip() or None


# -- other load -----------------------------------------------------------------------------------------


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle since boot (all processes, all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, threshold: float = 0.15, window: float = 2.0) -> float:
    """Wait (at most `max_wait` s) until other processes use under `threshold` of a core; returns the
    share they used in the last window, so a caller can say the box was shared. 0 s: no wait at all."""
    if max_wait <= 0:
        return 0.0
    deadline = time.monotonic() + max_wait
    while True:
        before = busy_cpu_seconds()
        time.sleep(window)
        share = (busy_cpu_seconds() - before) / window
        if share < threshold or time.monotonic() >= deadline:
            return share
