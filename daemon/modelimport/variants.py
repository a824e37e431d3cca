"""fp16 and int8 variants of an fp32 ONNX model, each measured against it on held-out inputs.

fp16 keeps float32 inputs and outputs (keep_io_types) so the pipeline feeds every variant the same.
int8 is static QDQ quantisation (uint8 activations, int8 per-channel weights), calibrated on
generated speech and face inputs; the check uses different seeds than the calibration.
Where the openvino package imports (the daemon's CPU runtime then), fp32 and int8 are also run in
OpenVINO and checked against onnxruntime's fp32, stored as "fp32@openvino" / "int8@openvino".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.transformers.float16 import convert_float_to_float16

from daemon.modelimport.calibration import batches
from daemon.modelimport.report import VariantCheck
from daemon.render import openvino_runtime
from daemon.render.modelspec import ModelSpec
from daemon.render.openvino_runtime import OpenVinoSession
from daemon.render.precision import UNDER_OPENVINO

CALIBRATION_SAMPLES = 32
CHECK_SAMPLES = 16
_CALIBRATION_SEED = 1000
_CHECK_SEED = 2000


def variant_file(precision: str) -> str:
    return f"model.{precision}.onnx"


def write_fp16(src: Path, dst: Path, *, external: bool = False) -> None:
    """`external`: weights in DST.data beside it, for files over 2 GB.

    Shapes are inferred from the file (which works over 2 GB, unlike the converter's own in-memory
    pass): the converter needs them to keep Resize's scales in float32.
    """
    if not external:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(model, str(dst))
        return
    shapes = src.with_name(f".{src.stem}.shapes.onnx")  # beside src, so its external data is found
    try:
        onnx.shape_inference.infer_shapes_path(str(src), str(shapes))
        model = convert_float_to_float16(onnx.load(str(shapes)), keep_io_types=True, disable_shape_infer=True)
    finally:
        shapes.unlink(missing_ok=True)
    onnx.save(model, str(dst), save_as_external_data=True, location=f"{dst.name}.data")


class _Feeds(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def write_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    with _quiet_quantizer():
        quantize_static(
            str(src),
            str(dst),
            _Feeds(feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantiser logs advice through the root logger; it would only confuse the user."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def compare(
    reference: Path, candidate: Path, feeds: list[dict[str, np.ndarray]], *, openvino: bool = False
) -> tuple[float, float]:
    """(max, mean) abs difference of the first output over all feeds, both run on the CPU: the reference
    in onnxruntime, the candidate too or (`openvino`) compiled by OpenVINO as the daemon runs it."""
    ref = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    run: Any = (
        OpenVinoSession(candidate)
        if openvino
        else ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    )
    diffs = [np.abs(ref.run(None, f)[0] - run.run(None, f)[0]) for f in feeds]
    return max(float(d.max()) for d in diffs), float(np.mean([d.mean() for d in diffs]))


def build_variants(
    folder: Path, spec: ModelSpec, *, fp16: bool, int8: bool, calibration_samples: int = CALIBRATION_SAMPLES
) -> tuple[ModelSpec, tuple[VariantCheck, ...]]:
    """Write the asked-for variants next to the fp32 file; the spec gains them in `variants`."""
    if not (fp16 or int8):
        return spec, ()  # no inputs to generate either (they need scikit-image's photo)
    names, batch = (spec.mel_input, spec.face_input), spec.batch or 1
    fp32 = folder / spec.onnx_file
    held_out = batches(max(CHECK_SAMPLES, batch), batch, _CHECK_SEED, names)
    checks = []
    for precision in [p for p, wanted in (("fp16", fp16), ("int8", int8)) if wanted]:
        target = folder / variant_file(precision)
        if precision == "fp16":
            write_fp16(fp32, target)
        else:
            write_int8(
                fp32, target, batches(max(calibration_samples, batch), batch, _CALIBRATION_SEED, names)
            )
        checks.append(VariantCheck(precision, target.name, *compare(fp32, target, held_out)))
    variants = {**spec.variants, **{c.precision: c.file for c in checks}}
    if int8 and openvino_runtime.available():  # the int8 auto may pick under OpenVINO: its own error
        for precision, file in (("fp32", spec.onnx_file), ("int8", variant_file("int8"))):
            error = compare(fp32, folder / file, held_out, openvino=True)
            checks.append(VariantCheck(precision + UNDER_OPENVINO, file, *error))
    errors = {
        c.precision: {"max_abs_error": c.max_abs_error, "mean_abs_error": c.mean_abs_error} for c in checks
    }
    return replace(spec, variants=variants, checks={**spec.checks, **errors}), tuple(checks)
