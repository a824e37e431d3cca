"""The importer's entry points for the CLI: one dispatcher on file content, and the listings.

Importing this module does not import torch; only a PyTorch checkpoint import does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import onnx
import structlog

from daemon.modelimport.detector_import import import_s3fd, import_yunet
from daemon.modelimport.errors import ModelImportError
from daemon.modelimport.machine import Wanted, wanted_variants
from daemon.modelimport.onnx_contract import ports
from daemon.modelimport.onnx_import import import_onnx, read_onnx
from daemon.modelimport.report import ImportReport
from daemon.render.detectors import DETECTORS_DIR, DetectorSpec
from daemon.render.modelspec import SPEC_NAME, ModelSpec

log = structlog.get_logger(__name__)
T = TypeVar("T")

_ZIP = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE = b"\x80"  # legacy torch.save: a pickle, protocol 2 or later
_YUNET_OUTPUTS = frozenset({"cls_8", "obj_8", "bbox_8", "kps_8"})


def import_checkpoint(
    path: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    fp16: bool = False,
    int8: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """A Wav2Lip / Wav2Lip-GAN PyTorch checkpoint -> models_dir/NAME (needs torch)."""
    from daemon.modelimport import wav2lip_import

    return wav2lip_import.import_checkpoint(
        path, models_dir, name=name, fp16=fp16, int8=int8, overwrite=overwrite
    )


def file_kind(path: Path) -> str:
    """Whether `path` holds a PyTorch checkpoint ("torch") or an ONNX model ("onnx"), by content."""
    if not path.is_file():
        raise ModelImportError(f"{path} does not exist or is not a file")
    with path.open("rb") as src:
        head = src.read(4)
    if _is_torch(head):
        return "torch"
    try:
        read_onnx(path)
    except ModelImportError:
        raise ModelImportError(
            f"{path} is neither a PyTorch checkpoint (.pth) nor an ONNX model (.onnx); "
            "import a Wav2Lip checkpoint, a Wav2Lip ONNX file, s3fd.pth or a YuNet ONNX file"
        ) from None
    return "onnx"


def _is_torch(head: bytes) -> bool:
    pickled = len(head) >= 2 and head[:1] == _PICKLE and 2 <= head[1] <= 5
    return head.startswith(_ZIP) or pickled


def import_model(
    path: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    fp16: bool | None = None,
    int8: bool | None = None,
    overwrite: bool = False,
) -> ImportReport:
    """Import whatever `path` holds: Wav2Lip checkpoint or ONNX, S3FD checkpoint, or YuNet ONNX.

    Detectors have fixed names (s3fd, yunet) and no variants; `name`, `fp16` and `int8` apply to
    lip-sync models only. A folder is a MuseTalk release (musetalkV15/, sd-vae/, whisper/).
    `fp16` / `int8`: True makes the variant, False does not, None (the default) makes it when
    `render.precision: auto` may pick it on this machine (modelimport.machine).
    """
    if path.is_dir():
        return _import_folder(path, models_dir, name=name, fp16=fp16, int8=int8, overwrite=overwrite)
    if file_kind(path) == "torch":
        if _is_s3fd_checkpoint(path):
            return import_s3fd(path, models_dir, overwrite=overwrite)
        wanted = wanted_variants(fp16, int8)
        report = import_checkpoint(
            path, models_dir, name=name, fp16=wanted.fp16, int8=wanted.int8, overwrite=overwrite
        )
        return _noted(report, wanted)
    if _is_yunet(path):
        return import_yunet(path, models_dir, overwrite=overwrite)
    wanted = wanted_variants(fp16, int8)
    report = import_onnx(path, models_dir, name=name, fp16=wanted.fp16, int8=wanted.int8, overwrite=overwrite)
    return _noted(report, wanted)


def _noted(report: ImportReport, wanted: Wanted) -> ImportReport:
    return replace(report, notes=report.notes + wanted.notes)


def _import_folder(
    path: Path, models_dir: Path, *, name: str | None, fp16: bool | None, int8: bool | None, overwrite: bool
) -> ImportReport:
    from daemon.modelimport.musetalk_files import is_musetalk_folder

    if not is_musetalk_folder(path):
        raise ModelImportError(
            f"{path} is a folder but not a MuseTalk release (no musetalkV15/, sd-vae/ or whisper/ in it); "
            "import a single file, or a folder laid out as MuseTalk's download script leaves it"
        )
    if int8:
        raise ModelImportError(
            "--int8 is not offered for MuseTalk models: the importer calibrates and checks int8 only for "
            "one-graph Wav2Lip-style models (image out in [0, 1]); MuseTalk's four graphs, with a UNet over "
            "2 GB, are not quantised. Use --fp16 (GPUs) or neither"
        )
    from daemon.modelimport.musetalk_import import import_musetalk  # torch, diffusers, transformers

    wanted = wanted_variants(fp16, False, int8_offered=False)
    return _noted(import_musetalk(path, models_dir, name=name, fp16=wanted.fp16, overwrite=overwrite), wanted)


def _is_s3fd_checkpoint(path: Path) -> bool:
    from daemon.modelimport.checkpoint import read_state_dict

    keys = read_state_dict(path, "PyTorch checkpoint").keys()
    return "conv3_3_norm.weight" in keys and "face_encoder_blocks.0.0.conv_block.0.weight" not in keys


def _is_yunet(path: Path) -> bool:
    _, outputs = ports(onnx.load(str(path), load_external_data=False))
    return {p.name for p in outputs} >= _YUNET_OUTPUTS


def list_models(models_dir: Path) -> list[ModelSpec]:
    """The lip-sync models on disk (models_dir/*/model.json), by name; unreadable specs are logged."""
    specs = [_read(ModelSpec.load, p.parent) for p in sorted(models_dir.glob(f"*/{SPEC_NAME}"))]
    return [s for s in specs if s is not None]


def list_detectors(models_dir: Path) -> list[DetectorSpec]:
    """The imported face detectors (models_dir/detectors/*/detector.json)."""
    folders = sorted(p.parent for p in (models_dir / DETECTORS_DIR).glob("*/detector.json"))
    specs = [_read(DetectorSpec.load, folder) for folder in folders]
    return [s for s in specs if s is not None]


def _read(loader: Callable[[Path], T], folder: Path) -> T | None:
    try:
        return loader(folder)
    except (OSError, ValueError, TypeError) as exc:  # broken JSON, unknown fields, unreadable file
        log.warning("model_spec_unreadable", folder=str(folder), error=str(exc))
        return None
