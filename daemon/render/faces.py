"""Face detection, streaming tracking and smoothing, and the 96x96 crop (DESIGN.md section 4).

The tracker is two small generator stages so that memory stays bounded whatever the video's length:

1. boxes: run the detector every `detect_every` frames (every frame while the face is lost), fill the
   frames between two hits by linear interpolation, hold the last box through misses of at most
   `max_gap` frames, give None beyond; pad 10 px at the bottom, clamped to the image.
2. smoothing: the Wav2Lip reference `get_smoothened_boxes(boxes, T=5)`, applied to each run of
   consecutive frames that have a face.

Look-ahead: stage 1 holds at most `detect_every - 1` frames (those waiting for the next detection) and
stage 2 at most `SMOOTH_WINDOW` frames, so at most `detect_every + 4` frames are buffered at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import structlog

from daemon.render.types import Box, FaceCrop, FaceDetector

log = structlog.get_logger(__name__)

CROP_SIZE = 96
PAD_BOTTOM = 10  # the reference `--pads 0 10 0 0`: top, bottom, left, right
SMOOTH_WINDOW = 5  # the reference `get_smoothened_boxes(boxes, T=5)`

Frame = np.ndarray
Tracked = tuple[np.ndarray, FaceCrop]


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, run on a grey copy downscaled to at most `max_side` pixels.

    Settings chosen on the astronaut photo (skimage) at 200..2048 px and zoomed crops: it finds exactly
    one face at every size. equalizeHist is left out: it added false positives there.
    """

    name = "haar"

    def __init__(self, *, max_side: int = 480, scale_factor: float = 1.1, min_neighbors: int = 5) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(
                f"could not load the Haar cascade {path}; reinstall opencv-python-headless 4.x"
            )
        self._max_side = max_side
        self._scale_factor = scale_factor
        self._min_neighbors = min_neighbors

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        grey, scale = _small_grey(frame_bgr, self._max_side)
        found = self._cascade.detectMultiScale(
            grey, scaleFactor=self._scale_factor, minNeighbors=self._min_neighbors, minSize=(24, 24)
        )
        boxes = [_scaled_box(x, y, w, h, scale) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes, key=lambda b: b.width * b.height, reverse=True)


def _small_grey(frame_bgr: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    height, width = grey.shape
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey, scale


def _scaled_box(x: int, y: int, w: int, h: int, scale: float) -> Box:
    return Box(round(x / scale), round(y / scale), round((x + w) / scale), round((y + h) / scale))


DetectorFactory = Callable[[Path], FaceDetector]


def builtin_detectors() -> dict[str, DetectorFactory]:
    """The factories this module provides; detectors.py adds "s3fd" and "yunet" to a copy of this."""
    return {"haar": lambda models_dir: HaarDetector()}


def detector_by_name(
    name: str, models_dir: Path, factories: dict[str, DetectorFactory] | None = None
) -> FaceDetector:
    """Build the named detector; `factories` defaults to the built-in ones (see `builtin_detectors`)."""
    known = builtin_detectors() if factories is None else factories
    if name not in known:
        raise ValueError(f"unknown face detector '{name}'; choose haar, s3fd or yunet (import them first)")
    return known[name](models_dir)


def crop_face(frame: np.ndarray, box: Box, size: int = CROP_SIZE) -> np.ndarray:
    """The (size, size, 3) BGR uint8 crop the model takes, resized like the reference (bilinear)."""
    face = frame[box.y1 : box.y2, box.x1 : box.x2]
    return cv2.resize(face, (size, size))


def pad_box(box: Box, frame_shape: tuple[int, ...]) -> Box:
    """The reference padding: PAD_BOTTOM px below the box, nothing elsewhere, clamped to the image."""
    height, width = frame_shape[:2]
    return Box(max(0, box.x1), max(0, box.y1), min(width, box.x2), min(height, box.y2 + PAD_BOTTOM))


@dataclass
class TrackStats:
    """Counters the pipeline reads after (or during) tracking."""

    frames: int = 0
    detector_calls: int = 0
    no_face_frames: int = 0


class FaceTracker:
    """Streams (frame, FaceCrop) pairs in order; see the module docstring for the look-ahead."""

    def __init__(self, detector: FaceDetector, *, detect_every: int = 5, max_gap: int = 12) -> None:
        if detect_every < 1 or max_gap < 0:
            raise ValueError("detect_every must be >= 1 and max_gap >= 0")
        self.detector = detector
        self.detect_every = detect_every
        self.max_gap = max_gap
        self.stats = TrackStats()

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[Tracked]:
        for index, (frame, box) in enumerate(smooth_runs(self._padded(frames))):
            self.stats.frames += 1
            self.stats.no_face_frames += int(box is None)
            yield frame, FaceCrop(index=index, box=box)

    def _padded(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, Box | None]]:
        for frame, box in self._raw(frames):
            yield frame, None if box is None else pad_box(box, frame.shape)

    def _raw(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, Box | None]]:
        state = _RawState()
        for index, frame in enumerate(frames):
            if not self._due(state, index):
                state.pending.append(frame)
                continue
            yield from self._on_detection(state, index, frame, self._detect(frame, state.last))
        yield from state.flush_held(self.max_gap)

    def _due(self, state: _RawState, index: int) -> bool:
        return state.last is None or state.lost or index - state.last_index >= self.detect_every

    def _detect(self, frame: np.ndarray, last: Box | None) -> Box | None:
        self.stats.detector_calls += 1
        return _pick(self.detector.detect(frame), last)

    def _on_detection(
        self, state: _RawState, index: int, frame: np.ndarray, box: Box | None
    ) -> Iterator[tuple[np.ndarray, Box | None]]:
        if box is None:
            yield from state.flush_held(self.max_gap)
            state.lost = True
            yield frame, state.held(index, self.max_gap)
            return
        if state.last is not None and not state.lost:
            yield from state.flush_interpolated(index, box)
        state.last, state.last_index, state.lost = box, index, False
        yield frame, box


class _RawState:
    """Stage 1's memory: the last hit and the frames waiting for the next detection."""

    def __init__(self) -> None:
        self.last: Box | None = None
        self.last_index = -1
        self.lost = False
        self.pending: list[np.ndarray] = []  # frames last_index+1 .. index-1, no detection run on them

    def held(self, index: int, max_gap: int) -> Box | None:
        if self.last is None or index - self.last_index > max_gap:
            return None
        return self.last

    def flush_held(self, max_gap: int) -> Iterator[tuple[np.ndarray, Box | None]]:
        start = self.last_index + 1
        for offset, frame in enumerate(self.pending):
            yield frame, self.held(start + offset, max_gap)
        self.pending = []

    def flush_interpolated(self, index: int, box: Box) -> Iterator[tuple[np.ndarray, Box | None]]:
        assert self.last is not None
        span = index - self.last_index
        for offset, frame in enumerate(self.pending, start=1):
            yield frame, _lerp(self.last, box, offset / span)
        self.pending = []


def _lerp(a: Box, b: Box, t: float) -> Box:
    coords = [round(p + (q - p) * t) for p, q in zip(_coords(a), _coords(b), strict=True)]
    return Box(*coords)


def _coords(box: Box) -> tuple[int, int, int, int]:
    return box.x1, box.y1, box.x2, box.y2


def _pick(boxes: list[Box], last: Box | None) -> Box | None:
    """The largest face, or the one overlapping the last box most, so a passer-by does not steal the track."""
    if not boxes:
        return None
    if last is None:
        return boxes[0]
    best = max(boxes, key=lambda b: _overlap(b, last))
    return best if _overlap(best, last) > 0 else boxes[0]


def _overlap(a: Box, b: Box) -> int:
    width = min(a.x2, b.x2) - max(a.x1, b.x1)
    height = min(a.y2, b.y2) - max(a.y1, b.y1)
    return max(0, width) * max(0, height)


def smooth_runs(
    items: Iterable[tuple[np.ndarray, Box | None]], window: int = SMOOTH_WINDOW
) -> Iterator[tuple[np.ndarray, Box | None]]:
    """The reference `get_smoothened_boxes`, streamed, within each run of frames that have a box.

    Like the reference, box i becomes the mean of boxes[i:i+window], truncated to int (it assigns into
    an int array in place); the last window-1 frames of a run use the run's last `window` entries,
    some of them already smoothed (the same in-place effect). A run shorter than `window` is averaged
    over the whole run (the reference's negative slice start would take an odd tail there).
    """
    run = _Run(window)
    for frame, box in items:
        if box is None:
            yield from run.finish()
            yield frame, None
            continue
        yield from run.push(frame, box)
    yield from run.finish()


class _Run:
    """Stage 2's memory: the run's frames still waiting for look-ahead, and its last smoothed boxes."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.waiting: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self.done: deque[np.ndarray] = deque(maxlen=window - 1)

    def push(self, frame: np.ndarray, box: Box) -> Iterator[tuple[np.ndarray, Box]]:
        self.waiting.append((frame, np.array(_coords(box), dtype=np.int64)))
        if len(self.waiting) == self.window:
            first, _ = self.waiting[0]
            smoothed = _mean_int([coords for _, coords in self.waiting])
            self.waiting.popleft()
            self.done.append(smoothed)
            yield first, Box(*smoothed.tolist())

    def finish(self) -> Iterator[tuple[np.ndarray, Box]]:
        need = self.window - len(self.waiting)  # >= 1: push never leaves a full window waiting
        boxes = list(self.done)[-need:] + [coords for _, coords in self.waiting]
        first = len(boxes) - len(self.waiting)
        for offset, (frame, _) in enumerate(self.waiting):
            boxes[first + offset] = _mean_int(boxes)
            yield frame, Box(*boxes[first + offset].tolist())
        self.waiting.clear()
        self.done.clear()


def _mean_int(boxes: list[np.ndarray]) -> np.ndarray:
    return np.mean(boxes, axis=0).astype(np.int64)  # truncation, as the reference's int array does


def track_faces(
    frames: Iterable[np.ndarray], detector: FaceDetector, *, detect_every: int = 5, max_gap: int = 12
) -> Iterator[Tracked]:
    """Convenience for `FaceTracker(...).track(frames)` when the counters are not needed."""
    return FaceTracker(detector, detect_every=detect_every, max_gap=max_gap).track(frames)
