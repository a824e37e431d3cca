"""Imported face detectors: S3FD (an ONNX file converted from `s3fd.pth`) and OpenCV's YuNet.

Both live in models/detectors/KIND/ with a `detector.json` beside the ONNX file (written by
`lipsyncd model import`). S3FD runs on onnxruntime (so on the GPU when the providers say so) and is
decoded here in numpy exactly like the Wav2Lip reference (`face_detection/detection/sfd`): softmax,
prior boxes of 4x the stride, variances 0.1/0.2, NMS at 0.3, then a 0.5 score threshold. YuNet runs
through `cv2.FaceDetectorYN`, which does its own decoding. No torch here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import structlog

from daemon.files import write_atomic
from daemon.render.types import Box, FaceDetector

log = structlog.get_logger(__name__)

DETECTORS_DIR = "detectors"  # models/detectors/KIND/
DETECTOR_SPEC = "detector.json"
S3FD_MEAN_RGB = np.array([104.0, 117.0, 123.0], np.float32)  # the reference subtracts this from RGB
S3FD_VARIANCES = (0.1, 0.2)


class DetectorError(Exception):
    """A detector that cannot be opened, worded for the user (which file, what to do)."""


@dataclass(frozen=True)
class DetectorSpec:
    """models/detectors/KIND/detector.json."""

    name: str  # "s3fd" or "yunet": the name configs and manifests use
    kind: str  # same as name today; kept apart so a second S3FD-like file could be added
    onnx_file: str = "model.onnx"
    input: str = "image"
    outputs: list[str] = field(default_factory=list)  # S3FD: cls1, reg1, ..., cls6, reg6
    source: str = ""
    source_sha256: str = ""
    notes: str = ""

    @classmethod
    def load(cls, folder: Path) -> DetectorSpec:
        path = folder / DETECTOR_SPEC
        if not path.is_file():
            raise DetectorError(f"no face detector in {folder}: import one with `lipsyncd model import FILE`")
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def save(self, folder: Path) -> None:
        """Atomically, like ModelSpec.save."""
        write_atomic(folder / DETECTOR_SPEC, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def detector_folder(models_dir: Path, kind: str) -> Path:
    return models_dir / DETECTORS_DIR / kind


# -- S3FD ----------------------------------------------------------------------------------------------


class S3fdDetector:
    """S3FD on onnxruntime. Frames larger than `max_side` are scaled down first (S3FD was trained on
    640 px crops; the reference runs at full size, which costs seconds per 1080p frame on a CPU)."""

    name = "s3fd"

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        threshold: float = 0.5,
        nms_iou: float = 0.3,
        max_side: int | None = 640,
    ) -> None:
        self.session = session
        self.threshold = threshold
        self.nms_iou = nms_iou
        self.max_side = max_side
        self._input = session.get_inputs()[0].name

    @classmethod
    def open(
        cls, folder: Path, providers: Sequence[str] = ("CPUExecutionProvider",), **options: float
    ) -> S3fdDetector:
        spec = DetectorSpec.load(folder)
        session = ort.InferenceSession(str(folder / spec.onnx_file), providers=list(providers))
        log.info("detector_loaded", detector="s3fd", provider=session.get_providers()[0])
        return cls(session, **options)  # type: ignore[arg-type]

    def raw_outputs(self, image_rgb: np.ndarray) -> list[np.ndarray]:
        """The 12 head outputs for one RGB image (H, W, 3), as the torch model returns them."""
        batch = (image_rgb.astype(np.float32) - S3FD_MEAN_RGB).transpose(2, 0, 1)[None]
        return list(self.session.run(None, {self._input: np.ascontiguousarray(batch)}))

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        return self.detect_scaled(*_downscale(frame_bgr, self.max_side), frame_bgr.shape)

    def detect_scaled(self, small: np.ndarray, scale: float, shape: tuple[int, ...]) -> list[Box]:
        """`detect` on a frame of `shape` already scaled down by `scale` (the pipeline makes it from
        downscaled planes)."""
        dets = decode_s3fd(self.raw_outputs(small[:, :, ::-1]))
        dets = dets[nms(dets, self.nms_iou)]
        dets = dets[dets[:, 4] > self.threshold]
        return [_to_box(row, scale, shape) for row in dets]


def softmax_channels(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probs


def decode_s3fd(outputs: Sequence[np.ndarray], min_score: float = 0.05) -> np.ndarray:
    """(N, 5) rows x1, y1, x2, y2, score for batch item 0, in head order, like the reference."""
    rows = [
        _decode_head(outputs[2 * i], outputs[2 * i + 1], 2 ** (i + 2), min_score)
        for i in range(len(outputs) // 2)
    ]
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, 5), np.float32)


def _decode_head(cls: np.ndarray, reg: np.ndarray, stride: int, min_score: float) -> np.ndarray:
    """One head: anchors at cell centres, side 4x the stride; loc decoded with the SSD variances."""
    scores = softmax_channels(cls)[0, 1]
    ys, xs = np.nonzero(scores > min_score)
    centres = np.stack([stride / 2 + xs * stride, stride / 2 + ys * stride], axis=1).astype(np.float32)
    loc = reg[0][:, ys, xs].T
    side = np.float32(4 * stride)
    centre = centres + loc[:, :2] * S3FD_VARIANCES[0] * side
    size = side * np.exp(loc[:, 2:] * S3FD_VARIANCES[1])
    corner = centre - size / 2
    return np.column_stack([corner, corner + size, scores[ys, xs]]).astype(np.float32)


def nms(dets: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS, best score first (the reference's +1 pixel area convention)."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = width * height / (areas[best] + areas[rest] - width * height)
        order = rest[overlap <= iou]
    return np.array(keep, dtype=np.int64)


def _downscale(frame: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    height, width = frame.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return frame, 1.0
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale


def _to_box(row: np.ndarray, scale: float, shape: tuple[int, ...]) -> Box:
    """Back to full-frame pixels, clamped to the image (the reference clips at 0 only)."""
    height, width = shape[:2]
    x1, y1, x2, y2 = (float(v) / scale for v in row[:4])
    return Box(
        int(min(max(x1, 0), width - 1)),
        int(min(max(y1, 0), height - 1)),
        int(min(max(x2, x1 + 1), width)),
        int(min(max(y2, y1 + 1), height)),
    )


# -- YuNet ---------------------------------------------------------------------------------------------


class YunetDetector:
    """OpenCV's YuNet (`face_detection_yunet_*.onnx` from the OpenCV model zoo) via cv2.FaceDetectorYN.

    One instance is not safe to share between threads (the OpenCV object keeps the input size).
    """

    name = "yunet"

    def __init__(
        self,
        model_path: Path,
        *,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 50,
        max_side: int | None = 640,
    ) -> None:
        self._yn = load_yunet(model_path, score_threshold, nms_threshold, top_k)
        self.max_side = max_side

    @classmethod
    def open(cls, folder: Path, **options: float) -> YunetDetector:
        spec = DetectorSpec.load(folder)
        detector = cls(folder / spec.onnx_file, **options)  # type: ignore[arg-type]
        log.info("detector_loaded", detector="yunet", provider="opencv")
        return detector

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        return self.detect_scaled(*_downscale(frame_bgr, self.max_side), frame_bgr.shape)

    def detect_scaled(self, small: np.ndarray, scale: float, shape: tuple[int, ...]) -> list[Box]:
        """`detect` on a frame of `shape` already scaled down by `scale`."""
        self._yn.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self._yn.detect(np.ascontiguousarray(small))
        if faces is None:
            return []
        faces = faces[np.argsort(faces[:, -1])[::-1]]  # last column: score
        return [_with_landmarks(_xywh_box(face[:4], scale, shape), face[4:14], scale) for face in faces]


def _with_landmarks(box: Box, points: np.ndarray, scale: float) -> Box:
    """YuNet's five landmarks (columns 4..13: x, y of right eye, left eye, nose tip, mouth corners), back
    in full-frame pixels; not clamped (a point may lie just outside the frame)."""
    return replace(box, landmarks=tuple(round(float(v) / scale) for v in points))


def _xywh_box(xywh: np.ndarray, scale: float, shape: tuple[int, ...]) -> Box:
    x, y, w, h = (float(v) for v in xywh)
    return _to_box(np.array([x, y, x + w, y + h]), scale, shape)


def load_yunet(path: Path, score: float = 0.6, nms_iou: float = 0.3, top_k: int = 50) -> cv2.FaceDetectorYN:
    """Open a YuNet file with OpenCV, or say plainly why not."""
    if not path.is_file():
        raise DetectorError(f"YuNet model {path} not found: import face_detection_yunet_*.onnx first")
    try:
        detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score, nms_iou, top_k)
        detector.detect(np.zeros((320, 320, 3), np.uint8))  # a file that loads may still not be YuNet
    except cv2.error as exc:
        raise DetectorError(
            f"{path} is not an OpenCV YuNet face detector (face_detection_yunet_*.onnx from the "
            f"OpenCV model zoo); OpenCV said: {_opencv_reason(str(exc))}"
        ) from exc
    return detector


def _opencv_reason(message: str) -> str:
    """'OpenCV(4.x) /src/file.cpp:288: error: (-210:Reason) Details' -> 'Reason: Details'."""
    found = re.search(r"error: \(-?\d+:([^)]*)\)\s*(.*)", message, re.DOTALL)
    return f"{found[1]}: {found[2].strip()}" if found else message.strip()


# -- registry ------------------------------------------------------------------------------------------


DetectorFactory = Callable[[Path], FaceDetector]


def detector_factories(providers: Sequence[str] = ("CPUExecutionProvider",)) -> dict[str, DetectorFactory]:
    """Factories for the imported detectors, keyed by the name configs use; each takes models_dir.

    Merge with `faces.builtin_detectors()` and pass the result to `faces.detector_by_name`.
    """
    return {
        "s3fd": lambda models_dir: S3fdDetector.open(detector_folder(models_dir, "s3fd"), providers),
        "yunet": lambda models_dir: YunetDetector.open(detector_folder(models_dir, "yunet")),
    }
