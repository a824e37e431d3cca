"""Model-only speed, through helper D's `bench/model_speed.py` (loaded from the repository by path: it is
a script, not part of the package), and the random fp32 Wav2Lip the end-to-end runs use.

The random model is a Wav2Lip checkpoint with random weights, imported through `daemon.modelimport` like
a user's (speed does not depend on the weights); it is built once under WORK/models/ (needs torch).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from daemon.render.baseline import ensure_baseline
from daemon.render.modelspec import SPEC_NAME

MODEL_SPEED = Path(__file__).resolve().parents[2] / "bench" / "model_speed.py"
WAV2LIP = "bench"  # the folder name model_speed.make_model imports into
CPU = ["CPUExecutionProvider"]


@functools.cache
def model_speed() -> ModuleType:
    """bench/model_speed.py as a module (once per process)."""
    if not MODEL_SPEED.is_file():
        raise FileNotFoundError(f"{MODEL_SPEED} is missing: run the benchmark from a clone of the repository")
    spec = importlib.util.spec_from_file_location("lipsyncd_model_speed", MODEL_SPEED)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def wav2lip_folder(models_dir: Path) -> Path:
    """The random fp32 Wav2Lip (with fp16 and int8 variants), imported on first use."""
    folder = models_dir / WAV2LIP
    if not (folder / SPEC_NAME).is_file():
        models_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr):  # the import report is progress, not results
            model_speed().make_model(models_dir)
        (models_dir / "random_wav2lip.pth").unlink(missing_ok=True)  # 145 MB only needed for the import
    return folder


def baseline_folder(models_dir: Path) -> Path:
    folder = models_dir / "baseline"
    ensure_baseline(folder)
    return folder


@dataclass(frozen=True)
class ModelSpeed:
    precision: str
    batch: int
    fps: float
    ms_per_batch: float
    runs: int
    provider: str


def measure_model(
    folder: Path, precision: str, batches: list[int], *, seconds: float, threads: int
) -> list[ModelSpeed]:
    """Frames/s of the model alone (numpy in, numpy out) at each batch size, via model_speed."""
    speed = model_speed()
    onnx = folder / ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")
    session = speed.session_for(onnx, CPU, threads)
    rows = []
    with contextlib.redirect_stdout(sys.stderr):
        for batch in batches:
            for t in speed.measure_one(session, precision, batch, seconds):
                rows.append(
                    ModelSpeed(t.precision, t.batch, t.fps, t.seconds_per_batch * 1000, t.runs, t.provider)
                )
    return rows
