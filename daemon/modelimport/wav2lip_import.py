"""Import a Wav2Lip / Wav2Lip-GAN PyTorch checkpoint: load strictly, export, check, write models/NAME."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import structlog
import torch

from daemon.files import file_sha256
from daemon.modelimport import torch_export
from daemon.modelimport.calibration import random_feeds
from daemon.modelimport.checkpoint import load_strict, read_state_dict
from daemon.modelimport.errors import ModelImportError
from daemon.modelimport.publish import check_free, model_name, publish, staging
from daemon.modelimport.report import ImportReport, error_notes
from daemon.modelimport.variants import build_variants
from daemon.modelimport.wav2lip_arch import Wav2Lip
from daemon.render.modelspec import ONNX_NAME, ModelSpec

log = structlog.get_logger(__name__)

WHAT = "Wav2Lip checkpoint"
TOLERANCE = 1e-4  # fp32 ONNX vs torch, max abs on outputs in [0, 1]
_NAMES = ("mel", "face")
_DYNAMIC = {"mel": {0: "batch"}, "face": {0: "batch"}, "image": {0: "batch"}}


def load_wav2lip(path: Path) -> Wav2Lip:
    """The generator with the checkpoint's weights, in eval mode; errors name the file and the key."""
    model = Wav2Lip()
    load_strict(model, read_state_dict(path, WHAT), path, WHAT)
    return model.eval()


def export_wav2lip(model: Wav2Lip, path: Path) -> float:
    """Write the ONNX file (inputs mel, face; output image; dynamic batch) and return its error vs torch."""
    example = [torch.from_numpy(v) for v in random_feeds(2, 0, _NAMES).values()]
    torch_export.export(model, example, path, _NAMES, ["image"], _DYNAMIC)
    error = torch_export.max_abs_vs_torch(model, path, random_feeds(3, 1, _NAMES))
    if not error <= TOLERANCE:  # also catches NaN
        raise ModelImportError(
            f"the ONNX export of {path.name} differs from PyTorch by {error:.2e} (limit {TOLERANCE:.0e}); "
            "nothing was written. Please report this with your torch and onnxruntime versions."
        )
    return error


def import_checkpoint(
    path: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    fp16: bool = False,
    int8: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Convert a Wav2Lip checkpoint into models_dir/NAME (model.onnx, variants, model.json)."""
    name = model_name(path, name)
    target = models_dir / name
    check_free(target, overwrite)
    model = load_wav2lip(path)
    log.info("checkpoint_loaded", source=str(path), model=name)
    with staging(models_dir, name) as folder:
        error = export_wav2lip(model, folder / ONNX_NAME)
        spec = ModelSpec(name=name, kind="wav2lip", source=path.name, source_sha256=file_sha256(path))
        spec, checks = build_variants(folder, spec, fp16=fp16, int8=int8)
        spec = replace(spec, notes=error_notes(error, checks))
        spec.save(folder)
        files = sorted(p.name for p in folder.iterdir())
        publish(folder, target, overwrite)
    log.info("model_imported", model=name, onnx_vs_torch=error, variants=sorted(spec.variants))
    return ImportReport(spec, target, tuple(target / f for f in files), error, checks)
