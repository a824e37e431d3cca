"""Reading a user's PyTorch checkpoint safely and loading it strictly into an architecture.

`weights_only=True`: a checkpoint is a user file, so no pickled code may run while reading it.
Accepted layouts: a dict with a `state_dict` entry (the public Wav2Lip files), or a bare state_dict;
keys may carry the `module.` prefix DataParallel adds. Legacy (non-zip) and zip files both load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from daemon.modelimport.errors import ModelImportError

_PREFIX = "module."
_SHOWN = 5  # keys named per problem in an error message


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by key, prefixes removed; `what` names the expected kind in errors."""
    raw = _load(path, what)
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping) or not state:
        raise ModelImportError(f"{path} is not a {what} (it holds {type(raw).__name__}, not a state_dict)")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(sorted(map(str, raw))[:_SHOWN]) if isinstance(raw, Mapping) else ""
        raise ModelImportError(f"{path} is not a {what} (no 'state_dict' of tensors; top-level keys: {keys})")
    return {_strip(str(k)): v for k, v in state.items()}


def _load(path: Path, what: str) -> object:
    if not path.is_file():
        raise ModelImportError(f"{path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; all mean the same to the user
        raise ModelImportError(f"{path} is not a {what} ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Weights only load failed" in str(exc):
        return "it holds Python objects besides tensors, which are not loaded from user files for safety"
    if isinstance(exc, EOFError) or "truncated" in text or "unexpected EOF" in text:
        return f"the file is truncated or damaged: {text}"
    return f"not a PyTorch file: {type(exc).__name__}: {text[:200]}"


def _strip(key: str) -> str:
    return key[len(_PREFIX) :] if key.startswith(_PREFIX) else key


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """Load every tensor; a missing, unexpected or wrongly-shaped key is an error naming it.

    BatchNorm's `num_batches_tracked` may be absent (files saved by old torch): it does not change
    the output in eval mode, so the model's own value is kept.
    """
    expected = model.state_dict()
    problems = _problems(expected, state)
    if problems:
        raise ModelImportError(f"{path} does not match the {what} architecture: " + "; ".join(problems))
    merged = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    model.load_state_dict(merged, strict=True)


def _problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} is {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    named = (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
    return [f"{label}: {_some(items)}" for label, items in named if items]


def _some(items: list[str]) -> str:
    more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more
