"""What an import did, for the CLI to print and the tests to check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.render.detectors import DetectorSpec
from daemon.render.modelspec import ModelSpec


@dataclass(frozen=True)
class VariantCheck:
    """One reduced-precision file, checked against the fp32 model on held-out inputs."""

    precision: str  # "fp16" or "int8"
    file: str  # name inside the model folder
    max_abs_error: float  # on outputs in [0, 1]; x255 for pixel levels
    mean_abs_error: float
    graph: str = ""  # which graph of a multi-graph model (MuseTalk); its outputs need not be in [0, 1]


@dataclass(frozen=True)
class ImportReport:
    """The spec written, the files written, and the errors measured while checking them."""

    spec: ModelSpec | DetectorSpec
    folder: Path
    files: tuple[Path, ...]
    onnx_vs_torch: float | None = None  # max abs difference fp32 ONNX vs torch; None for ONNX imports
    variants: tuple[VariantCheck, ...] = ()
    notes: tuple[str, ...] = ()
    graph_errors: tuple[tuple[str, float], ...] = ()  # (ONNX file, max abs vs torch) per graph

    def variant(self, precision: str) -> VariantCheck:
        return next(v for v in self.variants if v.precision == precision)

    def lines(self) -> list[str]:
        """Human-readable lines, one fact each."""
        out = [f"imported {self.spec.source} as {self.spec.kind} model '{self.spec.name}' into {self.folder}"]
        out += [f"  wrote {path.name} ({_size(path)})" for path in self.files]
        if self.onnx_vs_torch is not None:
            out.append(f"  fp32 ONNX vs PyTorch: max abs difference {self.onnx_vs_torch:.2e}")
        out += [f"  {file} vs PyTorch: max abs difference {error:.2e}" for file, error in self.graph_errors]
        out += [_variant_line(v) for v in self.variants]
        out += [f"  note: {note}" for note in self.notes]
        return out


def _variant_line(check: VariantCheck) -> str:
    if check.graph:
        return (
            f"  {check.graph} {check.precision} vs fp32: max abs error {check.max_abs_error:.2e}, "
            f"mean {check.mean_abs_error:.2e}"
        )
    return (
        f"  {check.precision} vs fp32: max abs error {check.max_abs_error:.2e} "
        f"({check.max_abs_error * 255:.1f} of 255 levels), mean {check.mean_abs_error:.2e}"
    )


def _size(path: Path) -> str:
    size = path.stat().st_size if path.exists() else 0
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def error_notes(onnx_vs_torch: float | None, checks: tuple[VariantCheck, ...]) -> str:
    """The measured errors in one line, kept in model.json so `model list` can show them later."""
    parts = [] if onnx_vs_torch is None else [f"fp32 ONNX vs PyTorch max abs {onnx_vs_torch:.1e}"]
    parts += [f"{c.precision} vs fp32 max abs {c.max_abs_error:.1e}" for c in checks]
    return "; ".join(parts)
