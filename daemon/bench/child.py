"""One render in a fresh process, so its peak memory is its own: `measure_render` starts
`python -m daemon.bench.child JOB_JSON`, which renders and prints one line `BENCH_RESULT {...}`.
`measure_renders` runs `job.renders` renders of the same video in one process (with `cache_dir`: through
one avatar cache, so the second render finds what the first kept) and returns one result each.

Peak memory is the child's VmHWM (resident high-water mark, model included) read just before it exits.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from daemon.bench.machine import busy_cpu_seconds

PREFIX = "BENCH_RESULT "


@dataclass(frozen=True)
class RenderJob:
    video: Path
    audio: Path
    model: Path  # a model folder (model.json inside)
    settings: dict[str, Any]  # RenderSettings fields
    threads: int = 0
    precision: str | None = None
    renders: int = 1  # renders of the video in this process, one after the other
    cache_dir: str | None = None  # an avatar cache folder every render goes through
    prep_only: bool = False  # skip generation (no UNet, no decoder): avatar preparation, blend, encode
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # or ("OpenVINO", "CPUExecutionProvider")


@dataclass(frozen=True)
class RenderRun:
    frames: int
    seconds: float  # the render's wall time (model loading excluded)
    fps: float
    peak_rss_mib: float
    cpu_seconds: float  # the render's user + system CPU (all its threads; model loading excluded)
    other_cpu_seconds: float  # CPU that other processes used meanwhile: > 0 means a shared machine
    detector_calls: int
    stages: dict[str, float]
    output_bytes: int = 0  # the rendered MP4's size
    cached_detections: int = 0  # detector answers replayed from the avatar cache
    reused_inputs: int = 0  # frames whose avatar inputs (MuseTalk: VAE latents) were kept from before

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1000 * self.cpu_seconds / max(self.frames, 1)


def measure_render(job: RenderJob, timeout: float = 3600.0) -> RenderRun:
    """Run `job` in a child process; raises RuntimeError with the child's last words if it fails."""
    return measure_renders(job, timeout)[-1]


def measure_renders(job: RenderJob, timeout: float = 3600.0) -> list[RenderRun]:
    """Each of `job.renders` renders' figures; the CPU others used is spread over them by duration."""
    payload = json.dumps(asdict(job), default=str)
    before_usage = os.times()
    before_busy = busy_cpu_seconds()
    done = subprocess.run(
        [sys.executable, "-m", "daemon.bench.child", payload],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    after_usage = os.times()
    child_cpu = (after_usage.children_user + after_usage.children_system) - (
        before_usage.children_user + before_usage.children_system
    )
    found = [line for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    if done.returncode != 0 or len(found) != job.renders:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"the benchmark render of {job.video.name} failed: " + " | ".join(tail))
    results = [json.loads(line[len(PREFIX) :]) for line in found]
    other = max(0.0, busy_cpu_seconds() - before_busy - child_cpu)
    total = sum(r["seconds"] for r in results) or 1.0
    return [RenderRun(**r, other_cpu_seconds=round(other * r["seconds"] / total, 1)) for r in results]


# -- the child ------------------------------------------------------------------------------------------


def _renders(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from daemon.render.avatar_cache import AvatarCache
    from daemon.render.media import probe_video
    from daemon.render.modelspec import ModelSpec
    from daemon.render.pipeline import RenderSettings
    from daemon.render.registry import OPENERS

    folder = Path(job["model"])
    model = OPENERS[ModelSpec.load(folder).kind](
        folder,
        providers=list(job.get("providers", ["CPUExecutionProvider"])),
        threads=job["threads"],
        precision=job["precision"],
    )
    settings = RenderSettings(**job["settings"])
    info = probe_video(Path(job["video"]))
    _warm_up(model, settings.batch_for(info.width, info.height), generate=not job.get("prep_only"))
    if job.get("prep_only"):
        model = PrepOnly(model)
    cache = AvatarCache(Path(job["cache_dir"])) if job.get("cache_dir") else None
    for _ in range(job.get("renders", 1)):
        yield _render(job, model, settings, cache)


def _render(job: dict[str, Any], model: Any, settings: Any, cache: Any) -> dict[str, Any]:
    from daemon.render.faces import HaarDetector
    from daemon.render.pipeline import VideoRender, prepare_audio

    with tempfile.TemporaryDirectory(prefix="lipsyncd-bench-") as tmp:
        audio = prepare_audio(Path(job["audio"]), Path(tmp) / "scratch")
        before = os.times()
        result = VideoRender(
            source=Path(job["video"]),
            audio=audio,
            out_path=Path(tmp) / "out.mp4",
            model=model,
            detector=HaarDetector(),
            settings=settings,
            scratch_dir=Path(tmp) / "scratch",
            stop=threading.Event(),
            cache=cache,
        ).run()
        output_bytes = result.output.stat().st_size
    after = os.times()
    return {
        "frames": result.frames,
        "seconds": round(result.seconds, 2),
        "fps": round(result.frames / result.seconds, 2),
        "peak_rss_mib": round(_vm_hwm_kib() / 1024, 1),
        "cpu_seconds": round(after.user + after.system - before.user - before.system, 2),
        "detector_calls": result.detector_calls,
        "cached_detections": result.cached_detections,
        "reused_inputs": result.reused_inputs,
        "output_bytes": output_bytes,
        "stages": {k: round(v, 2) for k, v in asdict(result.stages).items()} if result.stages else {},
    }


def _warm_up(model: Any, batch: int, *, generate: bool = True) -> None:
    """One batch before the clock starts: onnxruntime's first run allocates and plans (seconds on a CPU),
    which the daemon pays once per model, not per video. MuseTalk: one frame through its three per-frame
    graphs (a full-size batch costs a minute on a CPU; the allocations are made at batch 1 too)."""
    import numpy as np

    from daemon.render.musetalk import SIZE, MuseTalkModel

    if isinstance(model, MuseTalkModel):
        latents = model.avatar_inputs([np.zeros((SIZE, SIZE, 3), np.uint8)])
        if generate:
            model.generate(latents, np.zeros((1, 50, 384), np.float32))
        return
    model.infer(np.zeros((batch, 1, 80, 16), np.float32), np.zeros((batch, 6, 96, 96), np.float32))


class PrepOnly:
    """A MuseTalk model whose `generate` returns grey faces at once: a render with it times what comes
    before the UNet (detection, crops, VAE encodes, the avatar cache) and after it (blend, encode)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, inputs: Any, audio: Any) -> list[Any]:
        import numpy as np

        from daemon.render.musetalk import SIZE

        return [np.full((SIZE, SIZE, 3), 128, np.uint8) for _ in range(len(inputs))]


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str]) -> int:
    import structlog

    structlog.configure(  # the child's own logs: warnings only, to stderr; stdout carries the result
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    for result in _renders(json.loads(argv[0])):
        print(PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
