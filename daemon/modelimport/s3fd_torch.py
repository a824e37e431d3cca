"""The torch half of the S3FD import: strict loading and ONNX export (imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from daemon.modelimport import torch_export
from daemon.modelimport.checkpoint import load_strict, read_state_dict
from daemon.modelimport.s3fd_arch import OUTPUTS, S3FD

__all__ = ["OUTPUTS", "export_s3fd", "load_s3fd"]

WHAT = "S3FD face detector checkpoint (s3fd.pth)"
_AXES = {0: "batch", 2: "height", 3: "width"}


def load_s3fd(path: Path) -> S3FD:
    model = S3FD()
    load_strict(model, read_state_dict(path, WHAT), path, WHAT)
    return model.eval()


def export_s3fd(model: S3FD, path: Path, check_input: np.ndarray) -> float:
    """Write the ONNX file (input `image`, outputs cls1..reg6) and return the heads' error vs torch."""
    example = [torch.zeros(1, 3, 256, 256)]
    dynamic = {name: dict(_AXES) for name in ("image", *OUTPUTS)}
    torch_export.export(model, example, path, ["image"], list(OUTPUTS), dynamic)
    return torch_export.max_abs_vs_torch(model, path, {"image": check_input})
