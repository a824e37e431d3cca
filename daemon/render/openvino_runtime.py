"""OpenVINO on the CPU for the one-graph (Wav2Lip-kind) models: the daemon's CPU runtime when installed.

On this project's CPU (avx512_vnni, no AMX) OpenVINO ran the imported QDQ int8 Wav2Lip 2.2x faster than
onnxruntime's int8, and fp32 1.3x (bench/results/cpu-2026-12-02-openvino.json). It reads the same ONNX
files. `OpenVinoSession` offers the part of onnxruntime's InferenceSession that LipSyncModel uses
(get_providers, get_inputs, run), so the model runner does not care which runtime it holds.

`openvino` is imported only when OpenVINO is chosen (`available` tries it once per process), and
without its model-conversion tools (`load_openvino`).
"""

from __future__ import annotations

import functools
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# the pseudo-provider name: first in ModelPool.providers when OpenVINO runs the model; never passed to
# onnxruntime (the onnxruntime providers after it serve MuseTalk and the face detector)
OPENVINO = "OpenVINO"


def load_openvino() -> Any:
    """The openvino module, imported without openvino.tools.ovc: importing that sends a usage event to
    Google Analytics (openvino_telemetry: on when no consent file exists) from a thread it starts. The
    daemon converts nothing (OpenVINO reads ONNX itself); openvino/__init__ skips the tools when their
    import fails, which a None in sys.modules makes it do."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino.tools.ovc", None)  # type: ignore[arg-type]  # None: "not importable"
    import openvino

    return openvino


@functools.cache
def available() -> bool:
    """Whether the `openvino` package imports here (the choice in `choose_providers`)."""
    try:
        load_openvino()
    except Exception:  # noqa: BLE001 - a broken install is as good as none: onnxruntime runs the model
        return False
    return True


def compile_config(threads: int, bf16: bool = False) -> dict[str, str]:
    """One stream over all the threads: the pipeline sends one batch at a time and waits for it, so
    THROUGHPUT's several streams would leave all but one idle (full-size Wav2Lip int8, batch 16, one
    request on 2 cores: LATENCY 1 stream 85 frames/s, THROUGHPUT 2 streams 51). f32 is set explicitly:
    OpenVINO defaults to bf16 arithmetic on a CPU with avx512_bf16, whose error nothing here measured."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


@dataclass(frozen=True)
class Input:
    """One input as onnxruntime's NodeArg describes it: name, "tensor(float)"-style type, shape."""

    name: str
    type: str
    shape: list[int | str]


class OpenVinoSession:
    """A compiled ONNX file with the run/get_inputs/get_providers calls of an onnxruntime session.
    One infer request per calling thread: a request is not safe to share, a compiled model is."""

    def __init__(self, path: Path, *, threads: int = 0, bf16: bool = False) -> None:
        core = load_openvino().Core()
        self.compiled: Any = core.compile_model(str(path), "CPU", compile_config(threads, bf16))
        self._local = threading.local()

    def get_providers(self) -> list[str]:
        return [OPENVINO]

    def get_inputs(self) -> list[Input]:
        return [_describe(port) for port in self.compiled.inputs]

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer(feeds)
        wanted = names or [port.any_name for port in self.compiled.outputs]
        # copied: the request reuses its output buffer on the next call
        return [np.array(request.get_tensor(name).data) for name in wanted]


def _describe(port: Any) -> Input:
    shape = port.get_partial_shape()
    dims: list[int | str] = [d.get_length() if d.is_static else "batch" for d in shape]
    kind = "tensor(float16)" if port.get_element_type().get_type_name() == "f16" else "tensor(float)"
    return Input(port.any_name, kind, dims)
