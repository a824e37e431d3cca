"""A real render worker with a fixed-cost stand-in in place of the render, for the `cluster` benchmark.

`python -m daemon.bench.standin --config C render --slot N` runs `lipsyncd render` unchanged (intake,
claims with leases and heartbeats, the fenced `video_rendered`, the job's completion, links.json) except
that each claimed video, instead of being decoded, lip-synced and encoded, costs a fixed wall time
(LIPSYNCD_STANDIN_SECONDS, spent frame by frame at 25 frames/s with the pipeline's stop checks and
progress writes) and its source file is copied as the output. So the CPU is not the limit and what is
measured is the ledger's path around the render.

Each claim attempt is timed and logged as a `bench_claim` line (the call's duration, whether it claimed
a video, and the wall clock when it returned), which the benchmark reads back.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

COST_ENV = "LIPSYNCD_STANDIN_SECONDS"
FPS = 25.0  # the frames a video of that cost is said to have (links.json shows them)

log = structlog.get_logger(__name__)


@dataclass
class StandInRender:
    """Takes VideoRender's arguments; `run()` spends the fixed cost as a render would: frame by frame at
    FPS, looking at its stop event and reporting progress each frame (so the store sees the same progress
    writes and cancel checks), then copies the source as the output."""

    source: Path
    out_path: Path
    stop: Any  # the render's stop event: the daemon stopping, a cancel, or the claim lost
    on_progress: Callable[[float], None]
    cost_s: float

    def run(self) -> Any:
        from daemon.render.pipeline import Interrupted, RenderResult

        started = time.monotonic()
        frames = max(1, round(self.cost_s * FPS))
        for frame in range(1, frames + 1):
            # sleep until this frame is due (not a fixed step: the checks' own time is not added)
            time.sleep(max(0.0, started + frame / FPS - time.monotonic()))
            if self.stop.is_set():
                raise Interrupted("stopped")
            self.on_progress(frame / frames)
        tmp = self.out_path.with_name(f".{self.out_path.name}.standin")
        shutil.copyfile(self.source, tmp)
        os.replace(tmp, self.out_path)
        return RenderResult(self.out_path, frames, 0, FPS, time.monotonic() - started)


def install(cost_s: float) -> None:
    """Swap the render for the stand-in and time the claims, in this process only."""
    from daemon.render import service
    from daemon.store import JobStore

    def stand_in(**kwargs: Any) -> StandInRender:
        return StandInRender(
            kwargs["source"], kwargs["out_path"], kwargs["stop"], kwargs["on_progress"], cost_s
        )

    setattr(service, "VideoRender", stand_in)  # noqa: B010 - a bench-only swap, out of mypy's sight
    claim = JobStore.claim_next_video

    def timed_claim(self: JobStore, owner: str, lease_s: float, **kwargs: Any) -> Any:
        started = time.perf_counter()
        claimed = claim(self, owner, lease_s, **kwargs)
        ms = (time.perf_counter() - started) * 1000
        video = claimed[0] if claimed else None
        log.info(
            "bench_claim",
            ms=round(ms, 3),
            claimed=None if video is None else f"{video.job_id}/{video.output}",
            at=time.time(),
        )
        return claimed

    JobStore.claim_next_video = timed_claim  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    install(float(os.environ.get(COST_ENV, "2.0")))
    from daemon.cli import main as lipsyncd

    return lipsyncd(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
