"""torch -> ONNX with the TorchScript exporter, and the check of the exported file against torch.

The legacy exporter (`dynamo=False`) is used: it needs no onnxscript and handles these plain conv nets.
BatchNorm is folded into the preceding (transposed) convolution first, so the ONNX graph is only
Conv/ConvTranspose/Relu/Add/Concat/Sigmoid: simpler to quantise and to run.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

OPSET = 17


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy where each Sequential(conv, BatchNorm2d) becomes Sequential(conv', Identity)."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential) and len(module) == 2:
            conv, bn = module[0], module[1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                _fold_pair(conv, bn)
                module[1] = nn.Identity()
    return folded


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    # Conv2d weights are (out, in, k, k); ConvTranspose2d weights are (in, out, k, k)
    shape = (-1, 1, 1, 1) if isinstance(conv, nn.Conv2d) else (1, -1, 1, 1)
    conv.weight.mul_(scale.reshape(shape))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def export(
    model: nn.Module,
    example: Sequence[torch.Tensor],
    path: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    dynamic: dict[str, dict[int, str]],
    *,
    fold: bool = True,
) -> None:
    """Write `model` (BatchNorm folded unless `fold` is False: nets without BatchNorm skip the copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice: the legacy path is chosen
        torch.onnx.export(
            fold_batchnorm(model) if fold else model.eval(),
            tuple(example),
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


@torch.no_grad()
def max_abs_vs_torch(model: nn.Module, path: Path, feeds: dict[str, np.ndarray]) -> float:
    """Max abs difference, over every output, between onnxruntime (CPU) and the unfolded torch model."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    expected = model.eval()(*(torch.from_numpy(feeds[n]) for n in names))
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    got = session.run(None, feeds)
    return max(float(np.max(np.abs(g - e.numpy()))) for g, e in zip(got, expected, strict=True))
