"""`render.precision: auto`: which imported variant a model runs in on this machine, and why, in plain words.

Pure: the caller passes the provider, the CPU's flags and the spec; `cpu_flags` reads /proc/cpuinfo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daemon.render.modelspec import BASELINE, ModelSpec
from daemon.render.openvino_runtime import OPENVINO

# The one bound on a variant's error against fp32: the mean absolute difference of the output image
# (values in [0, 1]) on held-out inputs, measured at import. One 8-bit level: within it the variant's
# faces differ from fp32's by less than the 8-bit frame's own rounding. A sound int8 measures 0.0008 on
# the tests' tiny model and 0.0005 on a full-size random-weight Wav2Lip; the tiny model quantised with a
# broken calibration (faces 20x too dark: 0.025; all zeros: 0.41) is refused. (Random full-size weights
# cannot show a broken one: their output spans only [0.45, 0.53], so even an all-zeros calibration gives
# 0.0012 there; real weights use the whole range.)
MAX_MEAN_ABS_ERROR = 1 / 255

# Tests only: a comma- or space-separated flag list that replaces /proc/cpuinfo's, so a test of the
# choice passes on any CPU (e.g. LIPSYNCD_CPU_FLAGS=avx512_vnni). Read here and nowhere else.
CPU_FLAGS_ENV = "LIPSYNCD_CPU_FLAGS"
CPUINFO = Path("/proc/cpuinfo")

# int8 convolutions are only faster than fp32 with the dot-product instructions (VNNI) or AMX
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# the key in a spec's `checks` of a variant's error when OpenVINO runs it, against onnxruntime's fp32
UNDER_OPENVINO = "@openvino"
_MUSETALK_CPU = "fp32: int8 is not offered for MuseTalk models (its graphs are not quantised)"
_MUSETALK_GPU = (
    "fp32: MuseTalk's fp16 graphs have no error against fp32 on the final image stored; "
    "set render.precision: fp16 to use them"
)


@dataclass(frozen=True)
class Choice:
    precision: str | None  # None: the model's own (the weightless baseline)
    reason: str
    # True: run it in onnxruntime even though OpenVINO was chosen as the runtime (see `choose`)
    onnxruntime_only: bool = False


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (first processor's), or those in LIPSYNCD_CPU_FLAGS when it is set."""
    forced = os.environ.get(CPU_FLAGS_ENV)
    if forced is not None:
        return frozenset(forced.replace(",", " ").split())
    try:
        lines = cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return frozenset()
    line = next((line for line in lines if line.split(":", 1)[0].strip() == "flags"), "")
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


def int8_flags(flags: frozenset[str]) -> list[str]:
    return [flag for flag in INT8_FLAGS if flag in flags]


def choose(
    spec: ModelSpec, provider: str, flags: frozenset[str], bound: float = MAX_MEAN_ABS_ERROR
) -> Choice:
    """The precision `auto` runs SPEC in under PROVIDER (the session's first) on a CPU with FLAGS."""
    if spec.kind == BASELINE:
        return Choice(None, "the built-in baseline has one precision")
    if spec.kind == "musetalk":
        return Choice("fp32", _MUSETALK_GPU if provider in GPU_PROVIDERS else _MUSETALK_CPU)
    if provider in GPU_PROVIDERS:
        return _pick(spec, "fp16", f"{provider} runs half precision", bound)
    have = int8_flags(flags)
    if not have:
        return Choice(
            "fp32", f"fp32: this CPU has none of {', '.join(INT8_FLAGS)}, without which int8 is not faster"
        )
    why = f"this CPU has {have[0]}"
    if provider != OPENVINO:
        return _pick(spec, "int8", why, bound)
    under = _pick(spec, "int8", why, bound, OPENVINO)  # its own int8 kernels: its own error counts
    plain = _pick(spec, "int8", why, bound)
    if under.precision == "int8" or plain.precision != "int8":
        return under
    # int8 is sound in onnxruntime but not known to be under OpenVINO (most often: imported before the
    # openvino package was installed): onnxruntime's int8 is still faster than any fp32, so keep it
    return Choice(
        "int8",
        f"{plain.reason}, in onnxruntime rather than OpenVINO ({under.reason.removeprefix('fp32: ')})",
        onnxruntime_only=True,
    )


def _pick(spec: ModelSpec, precision: str, why: str, bound: float, runtime: str | None = None) -> Choice:
    """PRECISION if the spec has it and its stored error (the one under RUNTIME, when named) is within
    the bound; else fp32, saying why."""
    if precision != spec.precision and precision not in spec.variants:
        return Choice(
            "fp32",
            f"fp32: {why} but model '{spec.name}' has no {precision} variant "
            "(import it again on this machine, or with --fp16 / --int8)",
        )
    under = f" under {runtime}" if runtime else ""
    check = spec.checks.get(precision + UNDER_OPENVINO if runtime == OPENVINO else precision)
    if check is None:
        older = "without the openvino package or by an older lipsyncd" if runtime else "by an older lipsyncd"
        return Choice(
            "fp32",
            f"fp32: {why} but the {precision} variant's error{under} against fp32 was not stored "
            f"(imported {older}): import the model again with --overwrite",
        )
    error = check["mean_abs_error"]
    if error > bound:
        return Choice(
            "fp32",
            f"fp32: {why} but the {precision} variant's mean error{under} against fp32 "
            f"is {error:.4f} > {bound:.4f}",
        )
    return Choice(
        precision,
        f"{precision}: {why} and the {precision} variant's mean error{under} against fp32 "
        f"is {error:.4f} <= {bound:.4f}",
    )
