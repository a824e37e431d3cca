"""The built-in benchmark sections. Each returns rows for the table and checks against the targets of
issues 2 and 7; `--quick` shrinks every input so the whole command runs in well under a minute.

Renders run in fresh processes (`child.measure_render`) so each peak-memory figure is that render's own.
Before each measurement the run waits (up to `quiet_wait` s) for other processes to leave the CPU, and
records how much CPU they used meanwhile (`other_cpu_s`): a shared machine makes figures low.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from daemon.bench.child import RenderJob, RenderRun, measure_render
from daemon.bench.cluster_section import cluster_section
from daemon.bench.core import BenchContext, Check, Section, SectionResult
from daemon.bench.machine import wait_for_quiet
from daemon.bench.modelonly import baseline_folder, measure_model, wav2lip_folder
from daemon.bench.musetalk_section import musetalk_e2e_section, musetalk_memory_section, musetalk_section
from daemon.bench.paired_section import paired_section
from daemon.bench.workers_section import workers_section
from daemon.render.pipeline import RenderSettings

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
SIZES = {"256x256": (256, 256), "720p": (1280, 720), "1080p": (1920, 1080)}
VIDEO_SLACK = 2.0  # clips run this much longer than the audio: the common case, no replay needed
MEMORY_LIMIT_MIB = 1.5e9 / 2**20  # 1.5 GB (decimal), the bound: 1430.5 MiB
SAME_WITHIN = 0.10


def _models_dir(ctx: BenchContext) -> Path:
    return ctx.options.work_dir / "models"


def _model(ctx: BenchContext, name: str) -> Path:
    if name == "baseline":
        return baseline_folder(_models_dir(ctx))
    return wav2lip_folder(_models_dir(ctx))


def _render(
    ctx: BenchContext,
    video: Path,
    audio: Path,
    model: str,
    repeats: int | None = None,
    settings: RenderSettings | None = None,
) -> RenderRun:
    """The fastest of `repeats` runs (default: the options'), each in a fresh process."""
    chosen = asdict(settings or ctx.options.settings)
    job = RenderJob(video, audio, _model(ctx, model), chosen, ctx.options.threads)
    runs = []
    for _ in range(repeats or ctx.options.repeats):
        wait_for_quiet(ctx.options.quiet_wait)
        runs.append(measure_render(job))
    return max(runs, key=lambda run: run.fps)


def _row(label: dict[str, Any], run: RenderRun, fps_source: float = 25.0) -> dict[str, Any]:
    return {
        **label,
        "frames": run.frames,
        "fps": run.fps,
        "realtime_x": round(run.fps / fps_source, 2),
        "peak_rss_mib": run.peak_rss_mib,
        "cpu_ms_per_frame": round(run.cpu_ms_per_frame, 1),
        "cores_used": round(run.cpu_seconds / max(run.seconds, 1e-9), 2),
        "other_cpu_s": run.other_cpu_seconds,
        "detect_s": run.stages.get("detect", 0.0),
        "model_s": run.stages.get("model", 0.0),
        "encode_s": run.stages.get("encode", 0.0),
    }


def _same(what: str, short: RenderRun, long: RenderRun) -> Check:
    growth = long.peak_rss_mib / short.peak_rss_mib - 1
    return Check(what, f"within {SAME_WITHIN:.0%}", f"{growth:+.1%}", abs(growth) <= SAME_WITHIN)


# -- issue 2: the bundled example and a 60 s 1080p clip ---------------------------------------------------


def example_section(ctx: BenchContext) -> SectionResult:
    """Frames/s and peak memory with the built-in model: the bundled example, then 10 s and 60 s of 1080p."""
    rows = [_row({"clip": "examples/demo", "model": "baseline"}, _render(ctx, *_demo(), "baseline"))]
    if ctx.quick:
        return SectionResult(rows, notes=["quick: the bundled example only"])
    runs = {}
    for seconds in (10.0, 60.0):
        video = ctx.inputs.clip(SIZES["1080p"], seconds + VIDEO_SLACK)
        runs[seconds] = _render(ctx, video, ctx.inputs.speech(seconds), "baseline")
        rows.append(_row({"clip": f"1080p {seconds:g} s", "model": "baseline"}, runs[seconds]))
    return SectionResult(rows, [_same("peak memory, 60 s vs 10 s of 1080p", runs[10.0], runs[60.0])])


def _demo() -> tuple[Path, Path]:
    video, audio = DEMO / "anchor.mp4", DEMO / "speech.wav"
    if not video.is_file() or not audio.is_file():
        raise FileNotFoundError(f"the bundled example is missing from {DEMO}")
    return video, audio


# -- issue 7: end to end ----------------------------------------------------------------------------------

E2E_TARGETS = {"256x256": 0.80, "1080p": 0.60}


def e2e_section(ctx: BenchContext) -> SectionResult:
    """Frames/s and real-time factor at three sizes, against the model-only figure at the same batch."""
    sizes = ["256x256"] if ctx.quick else list(SIZES)
    models = ["baseline"] if ctx.quick else ["baseline", "wav2lip"]
    seconds = 2.0 if ctx.quick else 20.0
    rows, checks = [], []
    for model in models:
        for size in sizes:
            batch = ctx.options.settings.batch_for(*SIZES[size])
            alone = _model_only(ctx, model, batch)
            video = ctx.inputs.clip(SIZES[size], seconds + VIDEO_SLACK)
            run = _render(ctx, video, ctx.inputs.speech(seconds), model)
            ratio = run.fps / alone
            label = {"size": size, "model": model, "batch": batch, "model_only_fps": round(alone, 1)}
            rows.append(_row(label, run))
            rows[-1]["vs_model_only"] = f"{ratio:.0%}"
            if model == "wav2lip" and size in E2E_TARGETS:
                target = E2E_TARGETS[size]
                checks.append(
                    Check(
                        f"end-to-end / model-only, {size}",
                        f">= {target:.0%}",
                        f"{ratio:.0%}",
                        ratio >= target,
                    )
                )
    notes = [
        f"model-only: fp32 at the render's batch, same threads; clips {seconds:g} s of audio; "
        f"best of {ctx.options.repeats} run(s)",
        "renders are timed after one warm-up batch (the daemon keeps its model open across videos)",
    ]
    return SectionResult(rows, checks, notes)


def _model_only(ctx: BenchContext, model: str, batch: int) -> float:
    wait_for_quiet(ctx.options.quiet_wait)
    seconds = 0.5 if ctx.quick else 5.0
    (speed,) = measure_model(
        _model(ctx, model), "fp32", [batch], seconds=seconds, threads=ctx.options.threads
    )
    return speed.fps


# -- issue 7: memory does not grow with length -------------------------------------------------------------


def memory_section(ctx: BenchContext) -> SectionResult:
    """Peak memory for a short and a long clip: at most 1.5 GB, and the same within 10%."""
    size, model = ("256x256", "baseline") if ctx.quick else ("1080p", "wav2lip")
    lengths = (2.0, 6.0) if ctx.quick else (10.0, 300.0)
    runs = []
    for seconds in lengths:
        video = ctx.inputs.clip(SIZES[size], seconds + VIDEO_SLACK)
        runs.append(_render(ctx, video, ctx.inputs.speech(seconds), model, repeats=1))
    rows = [_row({"size": size, "model": model, "seconds": s}, r) for s, r in zip(lengths, runs, strict=True)]
    checks = [_same(f"peak memory, {lengths[1]:g} s vs {lengths[0]:g} s", runs[0], runs[1])]
    if not ctx.quick:
        peak = runs[1].peak_rss_mib
        checks.append(
            Check(
                "peak memory, 5 min 1080p",
                "<= 1.5 GB",
                f"{peak * 2**20 / 1e9:.2f} GB",
                peak <= MEMORY_LIMIT_MIB,
            )
        )
    return SectionResult(rows, checks)


# -- issue 7: what the x264 preset costs and buys -----------------------------------------------------------

PRESETS = ("veryfast", "superfast", "ultrafast")


def encoder_section(ctx: BenchContext) -> SectionResult:
    """1080p Wav2Lip at three x264 presets: on a CPU the encoder competes with the model for the cores,
    so a faster preset buys frames/s and costs file size (what every upload and download then pays)."""
    size, model, seconds = ("256x256", "baseline", 2.0) if ctx.quick else ("1080p", "wav2lip", 20.0)
    batch = ctx.options.settings.batch_for(*SIZES[size])
    alone = _model_only(ctx, model, batch)
    video = ctx.inputs.clip(SIZES[size], seconds + VIDEO_SLACK)
    rows = []
    for preset in PRESETS:
        settings = replace(ctx.options.settings, preset=preset)
        run = _render(ctx, video, ctx.inputs.speech(seconds), model, settings=settings)
        row = _row({"size": size, "model": model, "preset": preset, "model_only_fps": round(alone, 1)}, run)
        row["vs_model_only"] = f"{run.fps / alone:.0%}"
        row["mb_per_minute"] = round(run.output_bytes / 1e6 * 60 / seconds, 1)
        rows.append(row)
    notes = [f"crf {ctx.options.settings.crf}; the generated clip (a moving photo), {seconds:g} s of audio"]
    return SectionResult(rows, notes=notes)


# -- model only ---------------------------------------------------------------------------------------------


def model_section(ctx: BenchContext) -> SectionResult:
    """Model-only frames/s (helper D's model_speed): fp32, fp16 and int8 at several batch sizes."""
    if ctx.quick:
        folder, precisions, batches, seconds = _model(ctx, "baseline"), ["fp32"], [1], 0.3
    else:
        folder, precisions, batches, seconds = (
            _model(ctx, "wav2lip"),
            ["fp32", "fp16", "int8"],
            [1, 16, 64],
            3.0,
        )
    rows = []
    for precision in precisions:
        wait_for_quiet(ctx.options.quiet_wait)
        for speed in measure_model(folder, precision, batches, seconds=seconds, threads=ctx.options.threads):
            rows.append({"model": folder.name, **asdict(speed), "fps": round(speed.fps, 1)})
    note = (
        "quick: the baseline model"
        if ctx.quick
        else "random fp32 Wav2Lip imported through daemon.modelimport"
    )
    return SectionResult(rows, notes=[note])


SECTIONS: tuple[Section, ...] = (
    Section("example", "Bundled example and 60 s 1080p (issue 2)", example_section),
    Section("e2e", "End to end vs model only", e2e_section),
    Section("memory", "Peak memory vs length", memory_section),
    Section("encoder", "x264 preset: speed vs file size", encoder_section),
    Section("model", "Model only", model_section),
    Section("workers", "1 vs 2 render worker processes, two 1080p videos", workers_section),
    Section("cluster", "Render hosts on one PostgreSQL ledger, fixed-cost stand-in render", cluster_section),
    Section("musetalk", "MuseTalk 1.5 on this CPU (random weights)", musetalk_section),
    Section("musetalk-e2e", "MuseTalk end to end, 2 s of 1080p (full size)", musetalk_e2e_section),
    Section("musetalk-memory", "MuseTalk peak memory vs length (tiny networks)", musetalk_memory_section),
    Section("paired", "Today's commit against this checkout, alternating runs", paired_section),
)
