"""The `paired` benchmark section: a reference commit (today's main, by default) against this checkout,
measured in alternating runs on the same inputs and the same machine, so that a change of load or of
the CPU's clock hits both sides alike.

Each side is a whole tree: the reference is exported with `git archive` into WORK/trees/COMMIT/ (once),
this checkout is used as it is. Every run starts that tree's own code in a fresh process (its folder
first on PYTHONPATH, this virtualenv's Python), with that tree's own defaults:

- `render --once`: a fresh share, a job of one 10 s clip (256x256, then 1080p) with the random Wav2Lip,
  imported by the tree's own plain `lipsyncd model import` (so each side gets the variants it makes by
  default, and `render.precision` at its default picks among them). Timed from the process's start to
  its exit (start-up, model load, the render, the encoder's flush and shutdown: what a user waits for);
  end-to-end frames/s = frames / that time. The render's own frames/s comes from its `video_rendered`
  line and its peak memory from the process's rusage.
- drop to link: this checkout's `bench/latency.py` driving the tree's own `lipsyncd run` on the embedded
  defaults with the bundled demo clip, one cold drop and N warm ones (median of the warm drops), each
  manifest renamed in from a temp file in the inbox (as `lipsyncd submit` does), then moved in from
  another folder (as `mv` does).

This checkout alone also gives the fp32 1080p render against the model alone at the same batch (both in
onnxruntime, as the target was set), and peak memory for 5 minutes of 1080p against 10 s.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from daemon.bench.core import BenchContext, Check, SectionResult
from daemon.bench.machine import busy_cpu_seconds, wait_for_quiet
from daemon.bench.modelonly import measure_model, model_speed

REPO = Path(__file__).resolve().parents[2]
# main before the int8 / YUV-domain / start-up work: "today's commit" of that round
REFERENCE = "62399bf"
SIZES = {"256x256": (256, 256), "1080p": (1920, 1080)}
CLIP_SECONDS = 10.0
LONG_SECONDS = 300.0
VIDEO_SLACK = 2.0
WARM_DROPS = 5
MODEL = "w2l"
MEMORY_LIMIT_MIB = 1.5e9 / 2**20
TARGET_SPEEDUP = 2.0
TARGET_FP32_SHARE = 0.60
TARGET_LATENCY_CUT = 0.30
SAME_WITHIN = 0.10


@dataclass(frozen=True)
class Tree:
    label: str  # "reference" or "current"
    root: Path
    commit: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.root)}


@dataclass(frozen=True)
class OnceRun:
    """One `lipsyncd render --once` of a one-video job."""

    frames: int
    wall_s: float  # process start to exit
    render_s: float  # the render itself (video_rendered.seconds)
    peak_rss_mib: float  # the process's high-water mark (ru_maxrss)
    precision: str  # what the model ran in, as its log says ("" when the tree does not say)
    other_cpu_s: float

    @property
    def e2e_fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def render_fps(self) -> float:
        return self.frames / self.render_s if self.render_s else 0.0

    @property
    def outside_render_s(self) -> float:
        return self.wall_s - self.render_s


def paired_section(ctx: BenchContext) -> SectionResult:
    work = ctx.options.work_dir.resolve() / "paired"  # the trees run in their own folders
    reference = export_tree(ctx.options.against or REFERENCE, work / "trees")
    current = Tree("current", REPO, _commit("HEAD") + ("+dirty" if _dirty() else ""))
    trees = (reference, current)
    checkpoint = random_checkpoint(work)
    models = {t.label: import_model(t, checkpoint, work / "models" / t.label) for t in trees}
    repeats = 1 if ctx.quick else max(ctx.options.repeats, 2)
    rows: list[dict[str, Any]] = []
    checks: list[Check] = []
    notes = [
        f"reference {reference.commit} vs current {current.commit}; runs alternate reference, current "
        f"({repeats} pair(s) per figure, the fastest of each side counts)",
        "end-to-end frames/s = frames / wall time of `lipsyncd render --once` (start-up, model load, "
        "render, encoder flush and shutdown); render frames/s = frames / the render's own seconds",
    ]
    sizes = ["256x256"] if ctx.quick else list(SIZES)
    seconds = 2.0 if ctx.quick else CLIP_SECONDS
    audio = ctx.inputs.speech(seconds)
    for size in sizes:
        video = ctx.inputs.clip(SIZES[size], seconds + VIDEO_SLACK)
        best = _paired_once(trees, models, video, audio, repeats, work)
        for tree in trees:
            rows.append(_once_row(f"render --once {size}", tree, best[tree.label]))
        speedup = best["current"].e2e_fps / best["reference"].e2e_fps
        checks.append(
            Check(
                f"end-to-end frames/s at {size}, current / reference",
                ">= 2.0x",
                f"{speedup:.2f}x",
                speedup >= TARGET_SPEEDUP,
            )
        )
    if not ctx.quick:
        fp32_row, fp32_check = _fp32_share(ctx, current, models["current"], work)
        rows.append(fp32_row)
        checks.append(fp32_check)
        memory_rows, memory_checks = _memory(ctx, current, models["current"], work)
        rows += memory_rows
        checks += memory_checks
    for outside in (False, True):
        latency_rows, latency_check = _latency(ctx, trees, outside, notes)
        rows += latency_rows
        checks.append(latency_check)
    return SectionResult(rows, checks, notes)


def _latency(
    ctx: BenchContext, trees: tuple[Tree, Tree], outside: bool, notes: list[str]
) -> tuple[list[dict[str, Any]], Check]:
    """The demo's drop-to-link on each tree, alternating; the lower median of each side's runs counts."""
    how = "moved in from another folder" if outside else "renamed in from a temp file (as submit does)"
    runs: dict[str, list[dict[str, Any]]] = {t.label: [] for t in trees}
    for _ in range(1 if ctx.quick else 2):
        for tree in trees:
            wait_for_quiet(ctx.options.quiet_wait)
            runs[tree.label].append(drop_to_link(tree, 1 if ctx.quick else WARM_DROPS, outside=outside))
    medians = {label: min(r["median_s"] for r in found) for label, found in runs.items()}
    rows = []
    for tree in trees:
        found = runs[tree.label]
        rows.append(
            {
                "measure": f"demo drop to link, {how}",
                "tree": tree.label,
                "commit": tree.commit,
                "median_s": medians[tree.label],
                "medians_per_run_s": [r["median_s"] for r in found],
                "cold_s": [r["cold"]["total_s"] for r in found],
                "startup_s": [r["startup_s"] for r in found],
            }
        )
        stages = min(found, key=lambda r: r["median_s"])["stages_median_s"]
        listed = ", ".join(f"{name} {seconds:g}" for name, seconds in stages.items())
        notes.append(f"{tree.label}, {how}: drop-to-link stages, median s: {listed}")
    cut = 1 - medians["current"] / medians["reference"]
    check = Check(
        f"demo drop-to-link ({how}), median of warm drops, lower by",
        ">= 30%",
        f"{cut:.0%}",
        cut >= TARGET_LATENCY_CUT,
    )
    return rows, check


# -- the trees ---------------------------------------------------------------------------------------------


def export_tree(commit: str, trees_dir: Path) -> Tree:
    """`commit`'s files under trees_dir/SHA/ (made once, atomically: a half-written tree is never used)."""
    sha = _commit(commit)
    root = trees_dir / sha
    if not root.is_dir():
        trees_dir.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", sha], cwd=REPO, capture_output=True, check=True
        ).stdout
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha}.", dir=trees_dir))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, root)
    return Tree("reference", root, sha)


def _commit(rev: str) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ValueError(f"--against {rev}: not a commit of this repository ({done.stderr.strip()})")
    return done.stdout.strip()


def _dirty() -> bool:
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return bool(done.stdout.strip())


def random_checkpoint(work: Path) -> Path:
    """A full-size Wav2Lip checkpoint with random weights (speed does not depend on them); needs torch."""
    path = work / "random_wav2lip.pth"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".random_wav2lip.tmp.pth")
        model_speed().write_checkpoint(tmp)
        os.replace(tmp, path)
    return path


def import_model(tree: Tree, checkpoint: Path, models_dir: Path) -> Path:
    """The tree's own plain `lipsyncd model import` (its default variants), once per tree and commit."""
    stamp = models_dir / f".imported-{tree.commit}"
    if not stamp.is_file():
        if models_dir.exists():
            subprocess.run(["rm", "-rf", str(models_dir)], check=True)
        models_dir.mkdir(parents=True)
        config = _config(models_dir.parent / f"import-{tree.label}", models_dir, {})
        _daemon(tree, config, ["model", "import", str(checkpoint), "--name", MODEL], timeout=900)
        stamp.touch()
    return models_dir


# -- render --once -----------------------------------------------------------------------------------------


def _paired_once(
    trees: tuple[Tree, Tree], models: dict[str, Path], video: Path, audio: Path, repeats: int, work: Path
) -> dict[str, OnceRun]:
    runs: dict[str, list[OnceRun]] = {t.label: [] for t in trees}
    for _ in range(repeats):
        for tree in trees:
            wait_for_quiet(60.0)
            runs[tree.label].append(render_once(tree, models[tree.label], video, audio, work))
    return {label: max(found, key=lambda r: r.e2e_fps) for label, found in runs.items()}


def render_once(
    tree: Tree, models: Path, video: Path, audio: Path, work: Path, render: dict[str, Any] | None = None
) -> OnceRun:
    """One job (audio + one video) through the tree's `lipsyncd render --once` on a fresh share."""
    with tempfile.TemporaryDirectory(prefix="paired-", dir=work) as tmp:
        root = Path(tmp)
        config = _config(root, models, {"model": MODEL, **(render or {})})
        media = root / "shared" / "inbox" / "media"
        media.mkdir(parents=True)
        for source in (video, audio):
            _place(source.resolve(), media / source.name)
        manifest = {"name": "paired", "audio": f"media/{audio.name}", "videos": [f"media/{video.name}"]}
        placed = root / "shared" / "inbox" / "paired.yaml"
        placed.write_text(yaml.safe_dump(manifest))
        # a manifest dropped a minute ago: neither tree waits out its settle time (a fast start-up would
        # otherwise meet a 2 s wait that a slow one had spent starting), so both times are start-up,
        # render and shutdown alone
        settled = time.time() - 60
        os.utime(placed, (settled, settled))
        log_path = root / "render.log"
        busy_before = busy_cpu_seconds()
        started = time.monotonic()
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--config", str(config), "render", "--once"],
                cwd=tree.root,
                env=tree.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        events = _events(log_path)
        rendered = [e for e in events if e.get("event") == "video_rendered"]
        if proc.returncode != 0 or not rendered:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{tree.label} render --once failed ({proc.returncode}):\n{tail}")
        loaded = next((e for e in events if e.get("event") == "model_loaded"), {})
        other = busy_cpu_seconds() - busy_before - (usage.ru_utime + usage.ru_stime)
        return OnceRun(
            frames=int(rendered[0]["frames"]),
            wall_s=round(wall, 2),
            render_s=float(rendered[0]["seconds"]),
            peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
            precision=str(loaded.get("precision", "")),
            other_cpu_s=round(max(0.0, other), 1),
        )


def _once_row(measure: str, tree: Tree, run: OnceRun) -> dict[str, Any]:
    return {
        "measure": measure,
        "tree": tree.label,
        "commit": tree.commit,
        "precision": run.precision or "fp32 (the reference's only default)",
        "frames": run.frames,
        "wall_s": run.wall_s,
        "e2e_fps": round(run.e2e_fps, 1),
        "render_fps": round(run.render_fps, 1),
        "outside_render_s": round(run.outside_render_s, 2),
        "peak_rss_mib": run.peak_rss_mib,
        "other_cpu_s": run.other_cpu_s,
    }


def _fp32_share(ctx: BenchContext, current: Tree, models: Path, work: Path) -> tuple[dict[str, Any], Check]:
    """This checkout's fp32 1080p render against the model alone (fp32, the render's batch)."""
    batch = ctx.options.settings.batch_for(*SIZES["1080p"])
    video = ctx.inputs.clip(SIZES["1080p"], CLIP_SECONDS + VIDEO_SLACK)
    audio = ctx.inputs.speech(CLIP_SECONDS)
    runs = []
    for _ in range(max(ctx.options.repeats, 2)):
        wait_for_quiet(ctx.options.quiet_wait)
        runs.append(
            render_once(current, models, video, audio, work, {"precision": "fp32", "providers": "cpu"})
        )
    best = max(runs, key=lambda r: r.render_fps)
    wait_for_quiet(ctx.options.quiet_wait)
    (alone,) = measure_model(models / MODEL, "fp32", [batch], seconds=5.0, threads=ctx.options.threads)
    share = best.render_fps / alone.fps
    row = _once_row("render --once 1080p, fp32 in onnxruntime", current, best)
    row["model_only_fps"] = round(alone.fps, 1)
    check = Check(
        f"fp32 1080p render / model alone ({best.render_fps:.1f} / {alone.fps:.1f} frames/s)",
        ">= 60%",
        f"{share:.0%}",
        share >= TARGET_FP32_SHARE,
    )
    return row, check


def _memory(
    ctx: BenchContext, current: Tree, models: Path, work: Path
) -> tuple[list[dict[str, Any]], list[Check]]:
    """Peak memory of this checkout's `render --once`, 10 s and 5 min of 1080p (its default precision)."""
    runs = {}
    for seconds in (CLIP_SECONDS, LONG_SECONDS):
        video = ctx.inputs.clip(SIZES["1080p"], seconds + VIDEO_SLACK)
        wait_for_quiet(ctx.options.quiet_wait)
        runs[seconds] = render_once(current, models, video, ctx.inputs.speech(seconds), work)
    rows = [_once_row(f"memory, 1080p {s:g} s", current, r) for s, r in runs.items()]
    short, long = runs[CLIP_SECONDS].peak_rss_mib, runs[LONG_SECONDS].peak_rss_mib
    growth = long / short - 1
    return rows, [
        Check(
            "peak memory, 5 min 1080p", "<= 1.5 GB", f"{long * 2**20 / 1e9:.2f} GB", long <= MEMORY_LIMIT_MIB
        ),
        Check(
            "peak memory, 5 min vs 10 s of 1080p",
            f"within {SAME_WITHIN:.0%}",
            f"{growth:+.1%}",
            abs(growth) <= SAME_WITHIN,
        ),
    ]


# -- drop to link ------------------------------------------------------------------------------------------


def drop_to_link(tree: Tree, warm_drops: int, *, outside: bool) -> dict[str, Any]:
    """This checkout's bench/latency.py driving the tree's own `lipsyncd run`: one cold drop and
    `warm_drops` warm ones, each manifest renamed into the inbox from a hidden temp file in it (as
    `lipsyncd submit` does) or, with `outside`, moved in from another folder (as `mv` does)."""
    latency = _latency_script()
    with contextlib.redirect_stdout(sys.stderr):  # its own table is progress here
        result: dict[str, Any] = latency.run(False, warm_drops, repo=tree.root, outside=outside)
    return result


@functools.cache
def _latency_script() -> ModuleType:
    path = REPO / "bench" / "latency.py"
    spec = importlib.util.spec_from_file_location("lipsyncd_latency", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path} is missing: run the benchmark from a clone of the repository")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# -- shared bits -------------------------------------------------------------------------------------------


def _config(root: Path, models: Path, render: dict[str, Any]) -> Path:
    paths = {"shared": "shared", "inbox": "shared/inbox", "outputs": "shared/outputs/latest_batch"}
    paths |= {"state": "state"}
    config: dict[str, Any] = {
        "paths": {k: str(root / v) for k, v in paths.items()},
        "logging": {"format": "json"},
    }
    config["paths"]["models"] = str(models)
    if render:
        config["render"] = render
    root.mkdir(parents=True, exist_ok=True)
    path = root / "lipsyncd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _daemon(tree: Tree, config: Path, args: list[str], timeout: float) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), *args],
        cwd=tree.root,
        env=tree.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{tree.label}: lipsyncd {' '.join(args)} failed:\n{(done.stderr or done.stdout)[-2000:]}"
        )


def _events(path: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _latency_script().json_lines(path)
    return found


def _place(source: Path, dest: Path) -> None:
    """A hard link where the file system allows (a 5 min clip is not copied per run), else a copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
