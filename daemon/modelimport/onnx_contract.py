"""Reading a user's Wav2Lip-style ONNX file and mapping its inputs and output onto the contract.

Other tools name the inputs mel/face, mel/vid, mel_spectrogram/video_frames or source/target; which
input is which is decided by shape (the 1x80x16 one is audio, the 6x96x96 one the face), falling back
to known names only when the shapes are symbolic. A fixed batch is recorded, a dynamic one left None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from daemon.modelimport.errors import ModelImportError

MEL_DIMS = (1, 80, 16)
FACE_DIMS = (6, 96, 96)
IMAGE_DIMS = (3, 96, 96)
_MEL_NAMES = frozenset({"mel", "mel_spectrogram", "mels", "audio", "audio_sequences", "source"})
_FACE_NAMES = frozenset({"face", "vid", "video_frames", "face_sequences", "image", "target"})

Dim = int | None  # None: symbolic or unknown


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, element type and dims (None where not fixed)."""

    name: str
    elem_type: int
    dims: tuple[Dim, ...]

    def describe(self) -> str:
        shape = ", ".join("?" if d is None else str(d) for d in self.dims)
        return f"{self.name} ({shape}) {onnx.TensorProto.DataType.Name(self.elem_type).lower()}"


@dataclass(frozen=True)
class Contract:
    """The model's own names for mel, face and image, and its fixed batch (None if dynamic)."""

    mel_input: str
    face_input: str
    output: str
    batch: int | None


def ports(model: onnx.ModelProto) -> tuple[list[Port], list[Port]]:
    """Real inputs (initializers listed as inputs by old exporters left out) and outputs."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [_port(v) for v in model.graph.input if v.name not in weights]
    return inputs, [_port(v) for v in model.graph.output]


def _port(value: onnx.ValueInfoProto) -> Port:
    tensor = value.type.tensor_type
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim
    )
    return Port(value.name, tensor.elem_type, dims)


def _fits(port: Port, dims: tuple[int, ...]) -> bool:
    """Rank 4 and every non-batch dim equal to `dims` or symbolic."""
    return len(port.dims) == 4 and all(d is None or d == e for d, e in zip(port.dims[1:], dims, strict=True))


def _exact(port: Port, dims: tuple[int, ...]) -> bool:
    return port.dims[1:] == dims


def match(path: Path, inputs: list[Port], outputs: list[Port]) -> Contract:
    """Map the ports onto the contract, or raise naming what was expected and what was found."""
    if len(inputs) != 2:
        raise _misfit(path, f"it has {len(inputs)} inputs", inputs, outputs)
    mel, face = _assign(path, inputs, outputs)
    if len(outputs) != 1 or not _fits(outputs[0], IMAGE_DIMS):
        raise _misfit(path, "its output is not one (B, 3, 96, 96) image", inputs, outputs)
    _check_float(path, [mel, face, outputs[0]], inputs, outputs)
    return Contract(mel.name, face.name, outputs[0].name, _batch(path, [mel, face, outputs[0]]))


def _assign(path: Path, inputs: list[Port], outputs: list[Port]) -> tuple[Port, Port]:
    a, b = inputs
    options = [(m, f) for m, f in ((a, b), (b, a)) if _fits(m, MEL_DIMS) and _fits(f, FACE_DIMS)]
    if len(options) == 2:  # shapes too symbolic to tell: prefer exact shapes, then known names
        options = [o for o in options if _exact(o[0], MEL_DIMS) or _exact(o[1], FACE_DIMS)] or [
            o for o in options if o[0].name.lower() in _MEL_NAMES and o[1].name.lower() in _FACE_NAMES
        ]
    if len(options) != 1:
        raise _misfit(path, "its inputs are not one mel window and one face stack", inputs, outputs)
    return options[0]


def _check_float(path: Path, used: list[Port], inputs: list[Port], outputs: list[Port]) -> None:
    odd = [p for p in used if p.elem_type != onnx.TensorProto.FLOAT]
    if odd:
        raise _misfit(
            path, f"{odd[0].name} is not float32 (export with float32 inputs and outputs)", inputs, outputs
        )


def _batch(path: Path, used: list[Port]) -> int | None:
    fixed = {p.dims[0] for p in used if p.dims[0] is not None}
    if len(fixed) > 1:
        raise ModelImportError(f"{path} has inputs and output with different batch sizes: {sorted(fixed)}")
    return fixed.pop() if fixed else None  # one fixed dim fixes the whole model's batch


def _misfit(path: Path, problem: str, inputs: list[Port], outputs: list[Port]) -> ModelImportError:
    found_in = "; ".join(p.describe() for p in inputs) or "none"
    found_out = "; ".join(p.describe() for p in outputs) or "none"
    return ModelImportError(
        f"{path} does not fit the Wav2Lip contract: {problem}. Expected inputs: a mel window "
        f"(B, 1, 80, 16) and a face stack (B, 6, 96, 96), float32, any names; one output (B, 3, 96, 96). "
        f"Found inputs: {found_in}; outputs: {found_out}."
    )
