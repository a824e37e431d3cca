"""Model-only speed of an imported Wav2Lip: frames per second for fp32 / fp16 / int8 at several batches.

A randomly initialised Wav2Lip (speed does not depend on the weights) is saved like the public
checkpoint and imported through `daemon.modelimport`, so the files timed are the ones users get.

    .venv/bin/python bench/model_speed.py                      # CPU, batches 1, 16, 64
    .venv/bin/python bench/model_speed.py --providers cuda     # CUDA EP (onnxruntime-gpu), adds 128
    .venv/bin/python bench/model_speed.py --json bench/out/speed.json

"host" timings feed numpy arrays and fetch numpy results (what a plain session.run costs, copies
included); on CUDA "bound" timings keep inputs and outputs on the GPU with IO binding (model only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort

HEADER = f"\n{'prec':>5} {'batch':>6} {'mode':>6} {'frames/s':>10} {'ms/batch':>12} {'runs':>5}  provider"
Step = Callable[[], object]
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


@dataclass(frozen=True)
class Timing:
    precision: str
    batch: int
    mode: str  # "host" or "bound"
    provider: str
    runs: int
    seconds_per_batch: float
    fps: float


def make_model(models_dir: Path) -> dict[str, object]:
    """Import a random checkpoint with both variants; returns the import's measured errors."""
    from daemon.modelimport import import_checkpoint

    checkpoint = write_checkpoint(models_dir / "random_wav2lip.pth")
    report = import_checkpoint(checkpoint, models_dir, name="bench", fp16=True, int8=True)
    print("\n".join(report.lines()))
    errors: dict[str, object] = {"onnx_vs_torch": report.onnx_vs_torch}
    errors.update({v.precision: v.max_abs_error for v in report.variants})
    return errors


def write_checkpoint(path: Path) -> Path:
    """A full-size Wav2Lip checkpoint with random weights, laid out as the released .pth files are."""
    import torch

    from daemon.modelimport.wav2lip_arch import Wav2Lip

    torch.manual_seed(0)
    model = Wav2Lip()
    model.train()
    with torch.no_grad():  # BatchNorm statistics from data, so int8 calibration sees sane ranges
        model(torch.rand(8, 1, 80, 16) * 8 - 4, torch.rand(8, 6, 96, 96))
    state = {"module." + k: v for k, v in model.eval().state_dict().items()}
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=False)
    return path


def session_for(path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers)


def feeds_for(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {
        "mel": rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32),
        "face": rng.uniform(0, 1, (batch, 6, 96, 96)).astype(np.float32),
    }


def timed(step: Step, seconds: float, min_runs: int = 3) -> tuple[int, float]:
    """(runs, elapsed) after one warm-up call: at least `min_runs` runs and `seconds` seconds."""
    step()
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        step()
        runs += 1
    return runs, time.perf_counter() - start


def host_step(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Step:
    return lambda: session.run(["image"], feeds)


def bound_step(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Step:
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    binding.bind_output("image", "cuda", 0)
    return lambda: session.run_with_iobinding(binding)


def measure(args: argparse.Namespace, folder: Path) -> list[Timing]:
    print(HEADER)
    results = []
    for precision in args.precisions:
        session = session_for(folder / _file(precision), PROVIDERS[args.providers], args.threads)
        for batch in args.batches:
            results += measure_one(session, precision, batch, args.seconds)
    return results


def measure_one(session: ort.InferenceSession, precision: str, batch: int, seconds: float) -> list[Timing]:
    provider = session.get_providers()[0]
    modes = ["host", "bound"] if provider == "CUDAExecutionProvider" else ["host"]
    feeds, out = feeds_for(batch), []
    for mode in modes:
        step = host_step(session, feeds) if mode == "host" else bound_step(session, feeds)
        runs, elapsed = timed(step, seconds)
        out.append(Timing(precision, batch, mode, provider, runs, elapsed / runs, batch * runs / elapsed))
        print(_row(out[-1]), flush=True)
    return out


def _file(precision: str) -> str:
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def _row(t: Timing) -> str:
    return (
        f"{t.precision:>5} {t.batch:>6} {t.mode:>6} {t.fps:>10.1f} "
        f"{t.seconds_per_batch * 1000:>12.2f} {t.runs:>5}  {t.provider}"
    )


def machine() -> dict[str, object]:
    """CPU model, cores, GPU name (nvidia-smi), onnxruntime version and its providers."""
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "gpu": _gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def _gpu_name() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    done = subprocess.run(
        [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", choices=sorted(PROVIDERS), default="cpu")
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "fp16", "int8"])
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per row")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = [1, 16, 64] + ([128] if args.providers == "cuda" else [])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.providers == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, when that is where they are
    with tempfile.TemporaryDirectory(prefix="lipsyncd-bench-") as tmp:
        errors = make_model(Path(tmp))
        results = measure(args, Path(tmp) / "bench")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "import_errors": errors,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
