"""Which variants a plain `lipsyncd model import` makes: those `render.precision: auto` may pick here.

fp16 when this onnxruntime build has a GPU provider; int8 for Wav2Lip models when the CPU has VNNI or
AMX (daemon.render.precision). bf16 is never made: onnxruntime's CPU provider has no bf16 convolution,
so a bf16 Wav2Lip cannot run at all (see the README). --fp16 / --int8 force one; --no-variants skips both.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import onnxruntime as ort

from daemon.render.precision import GPU_PROVIDERS, cpu_flags, int8_flags


@dataclass(frozen=True)
class Wanted:
    fp16: bool
    int8: bool
    notes: tuple[str, ...] = ()  # why an automatic variant was left out, for the import report


def wanted_variants(fp16: bool | None, int8: bool | None, *, int8_offered: bool = True) -> Wanted:
    """None: make the variant if `auto` may pick it on this machine; True / False: the user's word."""
    notes: list[str] = []
    auto_fp16 = fp16 is None and any(p in ort.get_available_providers() for p in GPU_PROVIDERS)
    auto_int8 = int8 is None and int8_offered and bool(int8_flags(cpu_flags()))
    if (auto_fp16 or auto_int8) and importlib.util.find_spec("skimage") is None:
        # the calibration and check inputs are made from scikit-image's photo (the `import` extra)
        notes.append(
            "no reduced-precision variant made: scikit-image is not installed "
            "(pip install 'lipsyncd[import]'), so the model renders in fp32"
        )
        auto_fp16 = auto_int8 = False
    return Wanted(bool(fp16) or auto_fp16, bool(int8) or auto_int8, tuple(notes))
