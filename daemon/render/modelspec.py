"""The spec file that sits next to every model in the models directory (models/NAME/model.json).

The render side reads it to open the ONNX file; `lipsyncd model import` writes it. It maps the model's
own input/output names onto the Wav2Lip contract (mel, face -> image).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from daemon.files import write_atomic

SPEC_NAME = "model.json"
BASELINE = "baseline"


def available_models(models_dir: Path) -> list[str]:
    """Model names a manifest may ask for: every folder with a spec, and the built-in baseline. Here, not
    in the registry, so `lipsyncd submit` can check a model name without loading the inference runtime."""
    found = {p.parent.name for p in models_dir.glob(f"*/{SPEC_NAME}")} if models_dir.is_dir() else set()
    return sorted(found | {BASELINE})


ONNX_NAME = "model.onnx"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "baseline" (built in, weightless), "wav2lip" or "musetalk" (imported)
    onnx_file: str = ONNX_NAME  # relative to the spec's folder
    mel_input: str = "mel"  # the model's name for the (B, 1, 80, 16) mel window
    face_input: str = "face"  # the model's name for the (B, 6, 96, 96) face stack
    output: str = "image"  # the model's name for the (B, 3, 96, 96) output in [0, 1]
    batch: int | None = None  # None: dynamic batch; else the fixed batch the file was exported with
    precision: str = "fp32"  # fp32, fp16 or int8 (fp16 files still take and give float32 here)
    source: str = ""  # file the model was imported from (name only)
    source_sha256: str = ""
    # precision -> onnx file, e.g. {"fp16": "model.fp16.onnx"}
    variants: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    # precision -> its error against fp32 measured at import on held-out inputs, e.g.
    # {"int8": {"max_abs_error": 0.0014, "mean_abs_error": 0.0005}}; `render.precision: auto` reads it.
    # "int8@openvino" / "fp32@openvino": the same file run in OpenVINO, against onnxruntime's fp32.
    # Empty in specs written before it existed: auto then keeps such a model in fp32.
    checks: dict[str, dict[str, float]] = field(default_factory=dict)
    # kind "musetalk" only: its four graphs, role -> precision -> file, e.g. {"unet": {"fp32": "unet.onnx"}};
    # onnx_file and variants then name the UNet's files
    graphs: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> ModelSpec:
        data = json.loads((folder / SPEC_NAME).read_text(encoding="utf-8"))
        return cls(**data)

    def save(self, folder: Path) -> None:
        """Write atomically so a reader never sees half a spec."""
        write_atomic(folder / SPEC_NAME, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    def onnx_path(self, folder: Path, precision: str | None = None) -> Path:
        if precision and precision != self.precision:
            return folder / self.variants[precision]
        return folder / self.onnx_file

    def graph_path(self, folder: Path, role: str, precision: str | None = None) -> Path:
        """One graph of a multi-graph model (kind "musetalk"), in the given precision or the spec's."""
        return folder / self.graphs[role][precision or self.precision]
