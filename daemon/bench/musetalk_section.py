"""The `musetalk` benchmark section: MuseTalk 1.5 on this machine's CPU, with random weights.

a. each of the four full-size fp32 graphs alone in onnxruntime at batch 1, 8 and 16;
b. avatar preparation per frame, a first render of a video (detection, crops, two VAE encodes a frame)
   against a second one through the avatar cache (replayed detections, kept latents);
c. (section `musetalk-e2e`) 2 s of 1080p end to end with the full-size model: frames/s, seconds a frame,
   peak memory. A section of its own: 50 frames at ~10 s a frame, plus the avatar preparation;
d. (section `musetalk-memory`) peak memory of a 10 s and a 5 min 1080p render with the tiny networks:
   the same within 10%. A section of its own: 7,500 frames take about half an hour even with those.

`--quick` uses the tiny networks and small inputs throughout. The models are made once in
bench/out/models/ (see `musetalk_models`); the full-size import takes about 10 GB and many minutes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.bench.child import RenderJob, RenderRun, measure_renders
from daemon.bench.core import BenchContext, Check, SectionResult
from daemon.bench.machine import busy_cpu_seconds, wait_for_quiet
from daemon.bench.musetalk_models import import_report, musetalk_model

SIZES = {"256x256": (256, 256), "1080p": (1920, 1080)}
VIDEO_SLACK = 2.0  # clips run longer than the audio: every frame shown once, none reused
SAME_WITHIN = 0.10
E2E_SECONDS = 2.0  # ~10 s a frame on 2 cores: 50 frames take about 10 minutes
BATCHES = (1, 8, 16)
FULL_BATCH = 4  # the render batch with the full-size model (memory: see the section's notes)
# what one row of each graph's batch is; a new avatar frame needs two VAE encoder rows (masked + full)
UNITS = {
    "audio_encoder": "30 s audio segment",
    "vae_encoder": "256x256 image",
    "unet": "frame",
    "vae_decoder": "frame",
}


@dataclass(frozen=True)
class GraphSpeed:
    graph: str
    batch: int
    runs: int
    best_s: float  # the fastest run's seconds (the one least disturbed by other processes)
    other_cpu_s: float

    @property
    def per_second(self) -> float:
        return self.batch / self.best_s


def musetalk_section(ctx: BenchContext) -> SectionResult:
    size = "tiny" if ctx.quick else "full"
    full = musetalk_model(ctx.options.work_dir / "models", size)
    rows: list[dict[str, Any]] = []
    notes = [_import_note(full)]
    speeds, single = graph_speeds(ctx, full)
    rows += [_speed_row(size, s) for s in speeds]
    if single:
        notes.append(f"one run only (a single run took longer than the budget): {', '.join(single)}")
    prep_rows, prep_check = _avatar_prep(ctx, full, size)
    rows += prep_rows
    notes += [
        "random weights (no download): speed is the real graphs', the pictures are noise",
        f"fp32 on CPUExecutionProvider; batch = rows fed to the graph; vae_encoder rows are "
        f"{UNITS['vae_encoder']}s (a new avatar frame needs 2: masked and full), audio_encoder rows "
        f"{UNITS['audio_encoder']}s (once per job; one serves 750 frames at 25 fps)",
        "avatar prep = (detection + crops + VAE encodes) / frames, timed by the render's own clocks in "
        "a render with a model that skips the UNet and the decoder",
    ]
    if not ctx.quick:
        notes.append(_FULL_BATCH_NOTE)
    return SectionResult(rows, [prep_check], notes)


_FULL_BATCH_NOTE = (
    f"renders with the full-size model use batch {FULL_BATCH}: onnxruntime's CPU arena keeps each "
    "graph's largest batch (full VAE decoder ~500 MiB a frame, encoder ~190 MiB an image), so "
    "the default batch (10 at 1080p) would hold ~14 GB"
)


def musetalk_e2e_section(ctx: BenchContext) -> SectionResult:
    """c: a short render with the full-size model, from the job's audio to the encoded file."""
    size = "tiny" if ctx.quick else "full"
    row = _e2e(ctx, musetalk_model(ctx.options.work_dir / "models", size), size)
    notes = ["random weights: the speed is the real graphs', the pictures are noise"]
    return SectionResult([row], [], notes if ctx.quick else [*notes, _FULL_BATCH_NOTE])


def musetalk_memory_section(ctx: BenchContext) -> SectionResult:
    """d: peak memory of a short and a long render with the tiny networks, the same within 10%."""
    rows, check = _memory(ctx, musetalk_model(ctx.options.work_dir / "models", "tiny"))
    return SectionResult(rows, [check], ["tiny networks: the pipeline's memory, not the model's size"])


# -- a. the graphs alone ------------------------------------------------------------------------------------


def graph_speeds(ctx: BenchContext, folder: Path) -> tuple[list[GraphSpeed], list[str]]:
    """Each graph's best time at each batch; also the (graph, batch) measured with one run only."""
    from daemon.render.modelspec import ModelSpec

    spec = ModelSpec.load(folder)
    batches = (1,) if ctx.quick else BATCHES
    budget = 0.0 if ctx.quick else 20.0  # seconds of runs per figure, at least 2 runs within it
    out, single = [], []
    for graph in UNITS:
        session = _session(spec.graph_path(folder, graph), ctx.options.threads)
        session.run(None, graph_feeds(graph, 1))  # first run: onnxruntime allocates and plans
        for batch in batches:
            wait_for_quiet(ctx.options.quiet_wait)
            speed = time_graph(session, graph, batch, budget)
            out.append(speed)
            if speed.runs == 1 and budget:
                single.append(f"{graph} at batch {batch}")
        del session  # the full UNet holds 3.4 GB
    return out, single


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    from daemon.render.model import _session_options

    return ort.InferenceSession(str(path), _session_options(threads), providers=["CPUExecutionProvider"])


def time_graph(session: Any, graph: str, batch: int, budget: float) -> GraphSpeed:
    """Runs until `budget` seconds have passed and at least two ran, or one run alone took the budget."""
    feeds = graph_feeds(graph, batch)
    times: list[float] = []
    busy, own = busy_cpu_seconds(), time.process_time()
    while True:
        began = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - began)
        if sum(times) >= budget and (len(times) >= 2 or times[0] >= budget):
            break
    other = busy_cpu_seconds() - busy - (time.process_time() - own)
    return GraphSpeed(graph, batch, len(times), min(times), round(max(0.0, other), 1))


def graph_feeds(graph: str, batch: int) -> dict[str, np.ndarray]:
    """Inputs in each graph's working range (random: the timing does not depend on the values)."""
    rng = np.random.default_rng(batch)
    shapes: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {
        "audio_encoder": {"input_features": ((batch, 80, 3000), "uniform")},
        "vae_encoder": {"image": ((batch, 3, 256, 256), "uniform")},
        "unet": {"latent": ((batch, 8, 32, 32), "normal"), "audio": ((batch, 50, 384), "normal")},
        "vae_decoder": {"latent": ((batch, 4, 32, 32), "normal")},
    }
    return {
        name: (rng.uniform(-1, 1, shape) if kind == "uniform" else rng.normal(0, 1, shape)).astype(np.float32)
        for name, (shape, kind) in shapes[graph].items()
    }


def _speed_row(size: str, speed: GraphSpeed) -> dict[str, Any]:
    return {
        "part": "a graph",
        "what": f"{speed.graph} ({size})",
        "batch": speed.batch,
        "runs": speed.runs,
        "unit": UNITS[speed.graph],
        "per_s": round(speed.per_second, 3),
        "ms_per_batch": round(speed.best_s * 1000, 1),
        "other_cpu_s": speed.other_cpu_s,
    }


def _import_note(folder: Path) -> str:
    report = import_report(folder)
    if not report:
        return f"{folder.name}: imported earlier, no import report kept"
    errors = ", ".join(f"{name} {error:.1e}" for name, error in report["graph_errors"].items())
    return (
        f"{folder.name}: generated in {report['generate_s']:g} s, imported in {report['import_s']:g} s "
        f"(first run only; kept in {folder.parent}); ONNX vs PyTorch max abs difference: {errors}"
    )


# -- b. avatar preparation, with and without the avatar cache ---------------------------------------------


def _avatar_prep(ctx: BenchContext, folder: Path, size: str) -> tuple[list[dict[str, Any]], Check]:
    clip, seconds = ("256x256", 0.4) if ctx.quick else ("1080p", 1.0)
    cache = ctx.options.work_dir / "renders" / f"avatar-cache-{size}"
    _empty(cache)
    job = RenderJob(
        ctx.inputs.clip(SIZES[clip], seconds + VIDEO_SLACK),
        ctx.inputs.speech(seconds),
        folder,
        _settings(ctx, full=not ctx.quick),
        ctx.options.threads,
        renders=2,
        cache_dir=str(cache),
        prep_only=True,
    )
    wait_for_quiet(ctx.options.quiet_wait)
    first, second = measure_renders(job)
    rows = [
        _prep_row(f"first render, {clip} (cache empty)", size, first),
        _prep_row(f"second render, {clip} (cache hit)", size, second),
    ]
    hit = second.detector_calls == 0 and second.reused_inputs == second.frames
    check = Check(
        "second render of a video: detections and VAE latents all from the avatar cache",
        "0 detector calls, all frames reused",
        f"{second.detector_calls} detector calls, {second.reused_inputs} of {second.frames} reused",
        hit,
    )
    return rows, check


def _prep_row(what: str, size: str, run: RenderRun) -> dict[str, Any]:
    prep = run.stages.get("detect", 0.0) + run.stages.get("model", 0.0)
    return {
        "part": "b avatar prep",
        "what": f"{what} ({size})",
        "frames": run.frames,
        "prep_ms_per_frame": round(1000 * prep / max(run.frames, 1), 1),
        "detect_s": run.stages.get("detect", 0.0),
        "vae_s": run.stages.get("model", 0.0),
        "detector_calls": run.detector_calls,
        "reused": run.reused_inputs,
        "s_per_frame": round(run.seconds / max(run.frames, 1), 3),
        "peak_rss_mib": run.peak_rss_mib,
        "other_cpu_s": run.other_cpu_seconds,
    }


def _empty(folder: Path) -> None:
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()


# -- c. end to end ---------------------------------------------------------------------------------------


def _e2e(ctx: BenchContext, folder: Path, size: str) -> dict[str, Any]:
    clip, seconds = ("256x256", 0.4) if ctx.quick else ("1080p", E2E_SECONDS)
    run = _render(ctx, folder, clip, seconds, full=not ctx.quick)
    return {
        "part": "c end to end",
        "what": f"{clip}, {seconds:g} s of audio ({size})",
        "frames": run.frames,
        "per_s": run.fps,
        "s_per_frame": round(run.seconds / max(run.frames, 1), 3),
        "peak_rss_mib": run.peak_rss_mib,
        "other_cpu_s": run.other_cpu_seconds,
        "detect_s": run.stages.get("detect", 0.0),
        "vae_s": run.stages.get("model", 0.0),  # here: VAE encodes, UNet and decoder together
        "encode_s": run.stages.get("encode", 0.0),
    }


def _render(ctx: BenchContext, folder: Path, clip: str, seconds: float, *, full: bool = False) -> RenderRun:
    video = ctx.inputs.clip(SIZES[clip], seconds + VIDEO_SLACK)
    job = RenderJob(video, ctx.inputs.speech(seconds), folder, _settings(ctx, full), ctx.options.threads)
    wait_for_quiet(ctx.options.quiet_wait)
    (run,) = measure_renders(job)
    return run


def _settings(ctx: BenchContext, full: bool = False) -> dict[str, Any]:
    """The options' render settings; batch FULL_BATCH for the full-size model and for `--quick` (small
    batches: small arenas, quick to allocate)."""
    from dataclasses import asdict, replace

    small = full or ctx.quick
    return asdict(replace(ctx.options.settings, batch_size=FULL_BATCH) if small else ctx.options.settings)


# -- d. memory does not grow with length (tiny networks) ---------------------------------------------------


def _memory(ctx: BenchContext, tiny: Path) -> tuple[list[dict[str, Any]], Check]:
    clip = "256x256" if ctx.quick else "1080p"
    lengths = (0.8, 1.6) if ctx.quick else (10.0, 300.0)  # quick: both longer than a batch
    runs = [_render(ctx, tiny, clip, seconds) for seconds in lengths]
    rows = [
        {
            "part": "d memory",
            "what": f"{clip}, {seconds:g} s of audio (tiny)",
            "frames": run.frames,
            "per_s": run.fps,
            "s_per_frame": round(run.seconds / max(run.frames, 1), 3),
            "peak_rss_mib": run.peak_rss_mib,
            "other_cpu_s": run.other_cpu_seconds,
        }
        for seconds, run in zip(lengths, runs, strict=True)
    ]
    growth = runs[1].peak_rss_mib / runs[0].peak_rss_mib - 1
    check = Check(
        f"peak memory, {lengths[1]:g} s vs {lengths[0]:g} s of {clip} (tiny MuseTalk)",
        f"within {SAME_WITHIN:.0%}",
        f"{growth:+.1%}",
        abs(growth) <= SAME_WITHIN,
    )
    return rows, check
