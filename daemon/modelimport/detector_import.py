"""Import face detectors: S3FD from `s3fd.pth` (converted to ONNX) and a YuNet ONNX file (copied).

They go to models/detectors/KIND/ with a detector.json (daemon.render.detectors reads both).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import structlog

from daemon.files import file_sha256
from daemon.modelimport.errors import ModelImportError
from daemon.modelimport.publish import check_free, publish, staging
from daemon.modelimport.report import ImportReport
from daemon.render.detectors import S3FD_MEAN_RGB, DetectorError, DetectorSpec, detector_folder, load_yunet

log = structlog.get_logger(__name__)

S3FD_TOLERANCE = 1e-4
_S3FD_CHECK_SIZE = (1, 3, 200, 264)  # not the export size: proves height and width stay dynamic


def import_s3fd(path: Path, models_dir: Path, *, overwrite: bool = False) -> ImportReport:
    """Load `s3fd.pth` strictly, export the raw heads to ONNX, check them against torch, write."""
    from daemon.modelimport import s3fd_torch  # torch only here

    target = detector_folder(models_dir, "s3fd")
    check_free(target, overwrite)
    model = s3fd_torch.load_s3fd(path)
    with staging(target.parent, "s3fd") as folder:
        error = s3fd_torch.export_s3fd(model, folder / "model.onnx", _check_input())
        if not error <= S3FD_TOLERANCE:
            raise ModelImportError(f"the ONNX export of {path.name} differs from PyTorch by {error:.2e}")
        spec = _spec("s3fd", path, outputs=list(s3fd_torch.OUTPUTS), notes=f"raw heads max abs {error:.1e}")
        return _finish(spec, folder, target, overwrite, error)


def _check_input() -> np.ndarray:
    """A smooth random picture (structure, not only pixel noise), mean-subtracted like at run time."""
    height, width = _S3FD_CHECK_SIZE[2:]
    coarse = np.random.default_rng(0).uniform(0, 255, (12, 16, 3)).astype(np.float32)
    rgb = np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 255)
    return np.ascontiguousarray((rgb - S3FD_MEAN_RGB).transpose(2, 0, 1)[None])


def import_yunet(path: Path, models_dir: Path, *, overwrite: bool = False) -> ImportReport:
    """Check that OpenCV can run the file as YuNet, then copy it into models/detectors/yunet."""
    target = detector_folder(models_dir, "yunet")
    check_free(target, overwrite)
    try:
        load_yunet(path)
    except DetectorError as exc:
        raise ModelImportError(str(exc)) from exc
    with staging(target.parent, "yunet") as folder:
        shutil.copyfile(path, folder / "model.onnx")
        spec = _spec("yunet", path, input="", outputs=[], notes="runs through cv2.FaceDetectorYN")
        return _finish(spec, folder, target, overwrite, None)


def _spec(kind: str, path: Path, **fields: object) -> DetectorSpec:
    return DetectorSpec(name=kind, kind=kind, source=path.name, source_sha256=file_sha256(path), **fields)  # type: ignore[arg-type]


def _finish(
    spec: DetectorSpec, folder: Path, target: Path, overwrite: bool, error: float | None
) -> ImportReport:
    spec.save(folder)
    files = sorted(p.name for p in folder.iterdir())
    publish(folder, target, overwrite)
    log.info("detector_imported", detector=spec.kind, source=spec.source)
    return ImportReport(spec, target, tuple(target / f for f in files), error)
