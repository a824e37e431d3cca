"""The `workers` benchmark section: one job of two 1080p videos rendered by 1 and then by 2 render worker
processes (`lipsyncd render --slot N`), timed from the manifest's drop until the job store shows both
videos rendered. One process is bound by Python's GIL; several workers claim videos from the store with
leases, each in its own process.

The workers are the real daemon: a config in a fresh folder (no upload: `distribute` is off), the random
Wav2Lip (`--quick`: the built-in baseline at 256x256). Every run starts from an empty store, so the figure
includes each worker claiming its video, loading the audio and the model, and publishing the file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from daemon.bench.core import BenchContext, SectionResult
from daemon.bench.machine import busy_cpu_seconds, wait_for_quiet
from daemon.bench.modelonly import baseline_folder, wav2lip_folder
from daemon.files import write_atomic
from daemon.store import JobStore, VideoState

WORKER_COUNTS = (1, 2)
VIDEO_SLACK = 2.0  # the clips outlast the audio: every frame shown once
READY_WAIT_S = 120.0  # a worker loads its model before it says render_ready
RENDER_WAIT_S = 1800.0


@dataclass(frozen=True)
class WorkersRun:
    workers: int
    frames: int
    seconds: float  # drop -> both videos rendered
    per_video_fps: list[float]
    other_cpu_s: float  # CPU the rest of the machine used meanwhile (shared box: figures low)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def workers_section(ctx: BenchContext) -> SectionResult:
    size, seconds = ((256, 256), 1.0) if ctx.quick else ((1920, 1080), 10.0)
    model = baseline_folder(ctx.options.work_dir / "models")
    if not ctx.quick:
        model = wav2lip_folder(ctx.options.work_dir / "models")
    videos = [ctx.inputs.clip(size, seconds + VIDEO_SLACK), ctx.inputs.clip(size, seconds + VIDEO_SLACK + 1)]
    audio = ctx.inputs.speech(seconds)
    runs = []
    for count in WORKER_COUNTS:
        root = ctx.options.work_dir / "workers" / f"{count}"
        wait_for_quiet(ctx.options.quiet_wait)
        runs.append(run_workers(root, count, model, videos, audio, ctx.options.threads))
    rows = [_row(f"{size[0]}x{size[1]}", model.name, run) for run in runs]
    one, two = runs[0], runs[-1]
    notes = [
        f"{len(videos)} videos of {seconds:g} s in one job; time from the drop to both rendered, "
        "model load and audio included; per-video fps is each worker's own render (video_rendered)",
        f"{os.cpu_count()} CPU cores: 2 workers took {two.seconds / max(one.seconds, 1e-9):.2f}x the "
        "wall time of 1",
    ]
    return SectionResult(rows, [], notes)


def _row(size: str, model: str, run: WorkersRun) -> dict[str, Any]:
    return {
        "part": "render workers",
        "what": f"{run.workers} worker{'s' if run.workers > 1 else ''}, {size}, {model}",
        "frames": run.frames,
        "seconds": round(run.seconds, 2),
        "per_s": round(run.fps, 2),
        "per_video_fps": run.per_video_fps,
        "other_cpu_s": run.other_cpu_s,
    }


def run_workers(
    root: Path, count: int, model: Path, videos: list[Path], audio: Path, threads: int
) -> WorkersRun:
    """`count` render workers on a fresh share; one job of `videos` against `audio`; the timing."""
    root = root.resolve()  # the workers run inside it: a relative work dir (bench/out) would not resolve
    shutil.rmtree(root, ignore_errors=True)
    (root / "inbox" / "media").mkdir(parents=True)
    for n, video in enumerate(videos):
        shutil.copy(video, root / "inbox" / "media" / f"v{n}.mp4")
    shutil.copy(audio, root / "inbox" / "media" / "speech.wav")
    config = root / "lipsyncd.yaml"
    settings = {
        "paths": {
            "shared": ".",
            "inbox": "inbox",
            "outputs": "outputs",
            "state": "state",
            "models": str(model.parent.resolve()),
        },
        "render": {"model": model.name, "workers": count, "threads": threads, "providers": "cpu"},
    }
    write_atomic(config, yaml.safe_dump(settings))
    logs = [root / f"render@{slot}.log" for slot in range(count)]
    procs = [_start(config, slot, log, root) for slot, log in enumerate(logs)]
    try:
        _wait(lambda: all('"render_ready"' in _text(log) for log in logs), READY_WAIT_S, "workers ready")
        busy_before, started = busy_cpu_seconds(), time.monotonic()
        manifest = {"audio": "media/speech.wav", "videos": [f"media/v{n}.mp4" for n in range(len(videos))]}
        write_atomic(root / "inbox" / "pair.yaml", yaml.safe_dump(manifest))
        store = JobStore(root / "state")
        try:
            _wait(lambda: _all_rendered(store, len(videos)), RENDER_WAIT_S, "both videos rendered")
            seconds = time.monotonic() - started
            frames = sum(v.frames or 0 for job in store.jobs() for v in store.videos(job.id))
        finally:
            store.close()
        own_cpu = sum(_cpu_seconds(p.pid) for p in procs)
        other = max(0.0, busy_cpu_seconds() - busy_before - own_cpu)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    fps = [float(event["fps"]) for log in logs for event in _events(log, "video_rendered")]
    return WorkersRun(count, frames, seconds, sorted(fps), round(other, 1))


def _start(config: Path, slot: int, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(config), "render", "--slot", str(slot)],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _all_rendered(store: JobStore, count: int) -> bool:
    videos = [v for job in store.jobs() for v in store.videos(job.id)]
    if any(v.state == VideoState.FAILED for v in videos):
        raise RuntimeError(f"a video failed: {[v.error for v in videos if v.error]}")
    return len(videos) == count and all(v.state == VideoState.RENDERED for v in videos)


def _wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench workers: {what} not within {timeout:g} s")
        time.sleep(0.1)


def _text(log: Path) -> str:
    return log.read_text(errors="replace") if log.is_file() else ""


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines of one event."""
    lines = [line for line in _text(log).splitlines() if line.startswith("{") and f'"{name}"' in line]
    return [event for event in map(json.loads, lines) if event.get("event") == name]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (from /proc: the workers are still running)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
