"""Import an already-exported Wav2Lip ONNX file: inspect, map onto the contract, smoke-run, write."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import structlog

from daemon.files import file_sha256
from daemon.modelimport.calibration import random_feeds
from daemon.modelimport.errors import ModelImportError
from daemon.modelimport.onnx_contract import Contract, match, ports
from daemon.modelimport.publish import check_free, model_name, publish, staging
from daemon.modelimport.report import ImportReport, error_notes
from daemon.modelimport.variants import build_variants
from daemon.render.modelspec import ONNX_NAME, ModelSpec

log = structlog.get_logger(__name__)


def read_onnx(path: Path) -> onnx.ModelProto:
    """The model with any external weights pulled in, or a plain error naming the file."""
    if not path.is_file():
        raise ModelImportError(f"{path} does not exist or is not a file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends; all mean "not an ONNX file"
        raise ModelImportError(f"{path} is not an ONNX model ({exc})") from exc
    if not model.graph.node:
        raise ModelImportError(f"{path} is not an ONNX model (it has no graph)")
    return model


def inspect_wav2lip_onnx(path: Path) -> Contract:
    """How the file's inputs and output map onto mel, face -> image; raises if they do not fit."""
    return match(path, *ports(read_onnx(path)))


def smoke_run(path: Path, contract: Contract, source: Path) -> list[str]:
    """Run the model once on random inputs in the contract's ranges; a file whose shapes lie fails here.

    Returns notes for the report (an output outside [0, 1] is allowed but worth saying).
    """
    batch = contract.batch or 2
    feeds = random_feeds(batch, 3000, (contract.mel_input, contract.face_input))
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # the failure is reported below, in plain words, once
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out = session.run([contract.output], feeds)[0]
    except Exception as exc:  # onnxruntime's own errors: a broken or unsupported graph
        raise ModelImportError(f"{source} could not be run by onnxruntime: {str(exc)[:300]}") from exc
    if out.shape != (batch, 3, 96, 96) or not np.all(np.isfinite(out)):
        raise ModelImportError(
            f"{source} gave an output of shape {out.shape} (or NaNs), expected ({batch}, 3, 96, 96)"
        )
    low, high = float(out.min()), float(out.max())
    return (
        [] if low >= -1e-3 and high <= 1 + 1e-3 else [f"its output spans [{low:.2f}, {high:.2f}], not [0, 1]"]
    )


def import_onnx(
    path: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    fp16: bool = False,
    int8: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Copy a Wav2Lip-style ONNX file into models_dir/NAME with a spec mapping its names; variants."""
    name = model_name(path, name)
    target = models_dir / name
    check_free(target, overwrite)
    model = read_onnx(path)
    contract = match(path, *ports(model))
    with staging(models_dir, name) as folder:
        onnx.save(model, str(folder / ONNX_NAME))  # one self-contained file, external data folded in
        notes = smoke_run(folder / ONNX_NAME, contract, path)
        spec = _spec(name, path, contract)
        spec, checks = build_variants(folder, spec, fp16=fp16, int8=int8)
        spec = replace(spec, notes="; ".join(filter(None, [error_notes(None, checks), *notes])))
        spec.save(folder)
        files = sorted(p.name for p in folder.iterdir())
        publish(folder, target, overwrite)
    log.info(
        "model_imported", model=name, source=str(path), batch=contract.batch, variants=sorted(spec.variants)
    )
    return ImportReport(spec, target, tuple(target / f for f in files), None, checks, tuple(notes))


def _spec(name: str, path: Path, contract: Contract) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="wav2lip",
        mel_input=contract.mel_input,
        face_input=contract.face_input,
        output=contract.output,
        batch=contract.batch,
        source=path.name,
        source_sha256=file_sha256(path),
    )
