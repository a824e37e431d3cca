"""End-to-end 1080p render of one imported Wav2Lip in onnxruntime vs OpenVINO, same precision, interleaved.

    .venv/bin/python bench/openvino_e2e.py FOLDER --precision int8 --seconds 10 --rounds 2 \
        --json bench/results/cpu-DATE-openvino-e2e.json

FOLDER is an imported model folder (bench/model_speed.py builds a full-size random-weight Wav2Lip). Each
round renders the clip once per runtime in its own child (daemon.bench.child.measure_render), so a busy
box slows both alike; the load average is recorded per render. Inputs are generated into --inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.bench.child import RenderJob, measure_render
from daemon.bench.inputs import Inputs
from daemon.render.pipeline import RenderSettings

RUNTIMES = {"onnxruntime": ("CPUExecutionProvider",), "openvino": ("OpenVINO", "CPUExecutionProvider")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--inputs", type=Path, default=Path("/tmp/lipsyncd-bench-inputs"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    inputs = Inputs(args.inputs)
    video, audio = inputs.clip((1920, 1080), args.seconds + 1), inputs.speech(args.seconds)
    rows: list[dict[str, object]] = []
    for _ in range(args.rounds):
        for runtime, providers in RUNTIMES.items():
            job = RenderJob(
                video,
                audio,
                args.folder,
                asdict(RenderSettings()),
                precision=args.precision,
                providers=providers,
            )
            load = os.getloadavg()[0]
            run = measure_render(job)
            row = {
                "runtime": runtime,
                "precision": args.precision,
                "load_1min": round(load, 2),
                **asdict(run),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"size": "1920x1080", "seconds": args.seconds, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
