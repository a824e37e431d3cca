"""Model-alone frames/s of one imported Wav2Lip folder in onnxruntime and in OpenVINO, on the CPU.

Answers "would OpenVINO (or bf16) render faster here than onnxruntime fp32/int8?" for the random-weight
full-size Wav2Lip that `bench/model_speed.py` builds (speed does not depend on the weights). Needs only
numpy and the runtime being timed, so it runs in a throwaway venv that has OpenVINO (or
onnxruntime-openvino, which replaces onnxruntime and must not go into the project's venv):

    .venv/bin/python bench/cpu_runtimes.py ort FOLDER                     # onnxruntime fp32, int8
    /tmp/ov/bin/python bench/cpu_runtimes.py openvino FOLDER              # OpenVINO fp32, bf16, int8
    /tmp/ortov/bin/python bench/cpu_runtimes.py ort-openvino FOLDER       # onnxruntime's OpenVINO EP

FOLDER is an imported model folder with model.onnx and model.int8.onnx (the QDQ file, which OpenVINO
reads as int8). Prints one JSON line per (runtime, precision): batch 16, 96x96, `--repeats` timed
repeats of at least `--seconds` each, plus the load average when it started.

    .venv/bin/python bench/cpu_runtimes.py compare FOLDER --python openvino=/tmp/ov/bin/python \
        --python ort-openvino=/tmp/ortov/bin/python --rounds 3 --json bench/results/cpu-DATE-openvino.json

runs every runtime once per round, interleaved (so a busy box slows them alike), and writes them all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

Run = Callable[[dict[str, np.ndarray]], object]


def feeds(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {
        "mel": rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32),
        "face": rng.uniform(0, 1, (batch, 6, 96, 96)).astype(np.float32),
    }


def ort_runner(path: Path, provider: str, threads: int) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the daemon runs it
    provider_options = [{"device_type": "CPU"}] if provider == "OpenVINOExecutionProvider" else [{}]
    session = ort.InferenceSession(
        str(path), options, providers=[provider], provider_options=provider_options
    )
    return lambda f: session.run(["image"], f)


def openvino_runner(path: Path, hint: str, threads: int) -> Run:
    # no telemetry event: see daemon/render/openvino_runtime.py
    sys.modules.setdefault("openvino.tools.ovc", None)
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda f: request.infer(f)


def cases(runtime: str, folder: Path, threads: int) -> dict[str, Callable[[], Run]]:
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    if runtime == "ort":
        cpu = "CPUExecutionProvider"
        return {
            "fp32": lambda: ort_runner(fp32, cpu, threads),
            "int8": lambda: ort_runner(int8, cpu, threads),
        }
    if runtime == "ort-openvino":
        ovep = "OpenVINOExecutionProvider"
        return {
            "fp32": lambda: ort_runner(fp32, ovep, threads),
            "int8": lambda: ort_runner(int8, ovep, threads),
        }
    return {
        "fp32": lambda: openvino_runner(fp32, "f32", threads),
        "bf16": lambda: openvino_runner(fp32, "bf16", threads),  # fp32 weights, bf16 arithmetic (avx512_bf16)
        "int8": lambda: openvino_runner(int8, "f32", threads),  # the QDQ file: int8 convolutions
    }


def timed(run: Run, inputs: dict[str, np.ndarray], seconds: float) -> float:
    """Frames per second over at least `seconds` (one warm-up call first)."""
    run(inputs)
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        run(inputs)
        runs += 1
    return len(inputs["mel"]) * runs / (time.perf_counter() - start)


def measure(args: argparse.Namespace) -> None:
    inputs = feeds(args.batch)
    for precision, make in cases(args.runtime, args.folder, args.threads).items():
        load = os.getloadavg()[0]
        run = make()
        fps = [round(timed(run, inputs, args.seconds), 2) for _ in range(args.repeats)]
        row = {"runtime": args.runtime, "precision": precision, "batch": args.batch, "fps": fps}
        print(json.dumps({**row, "median_fps": sorted(fps)[len(fps) // 2], "load_1min": load}), flush=True)


def compare(args: argparse.Namespace) -> None:
    """Each runtime once per round (in its own python), interleaved; all rows into one JSON file."""
    pythons = {"ort": sys.executable, **dict(item.split("=", 1) for item in args.python)}
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for _ in range(args.rounds):
        for runtime, python in pythons.items():
            command = [
                python,
                __file__,
                runtime,
                str(args.folder),
                "--repeats",
                "1",
                "--seconds",
                str(args.seconds),
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                got = json.loads(line)
                row = rows.setdefault((runtime, got["precision"]), {**got, "fps": [], "load_1min": []})
                row["fps"].append(got["fps"][0])  # type: ignore[union-attr]
                row["load_1min"].append(round(got["load_1min"], 2))  # type: ignore[union-attr]
                print(line, flush=True)
    for row in rows.values():
        fps = sorted(row["fps"])  # type: ignore[type-var]
        row["median_fps"] = fps[len(fps) // 2]
    result = {"cpu": _cpu(), "batch": args.batch, "rounds": args.rounds, "rows": list(rows.values())}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def _cpu() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runtime", choices=["ort", "openvino", "ort-openvino", "compare"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="0: the runtime's choice (all cores)")
    parser.add_argument("--python", action="append", default=[], help="compare: RUNTIME=PYTHON that has it")
    parser.add_argument("--rounds", type=int, default=3, help="compare: interleaved rounds")
    parser.add_argument("--json", type=Path, default=None, help="compare: write all rows here")
    args = parser.parse_args()
    compare(args) if args.runtime == "compare" else measure(args)


if __name__ == "__main__":
    main()
