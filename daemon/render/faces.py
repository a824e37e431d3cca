"""Face detection, streaming tracking and smoothing, and the 96x96 crop.

The tracker is two small generator stages so that memory stays bounded whatever the video's length:

1. boxes: run the detector every `detect_every` frames (every frame while the face is lost), fill the
   frames between two hits by linear interpolation, hold the last box through misses of at most
   `max_gap` frames, give None beyond; pad 10 px at the bottom, clamped to the image. While the face
   is tracked, a detector with `detect_near` looks only near the last box (several times cheaper),
   and the full search runs when that finds nothing. A `DetectionMemo` (the avatar cache) can answer
   instead of the detector: the boxes come out identical, because the memo replays what it saw.
2. smoothing: the Wav2Lip reference `get_smoothened_boxes(boxes, T=5)`, applied to each run of
   consecutive frames that have a face.

Landmarks (YuNet's five points, `Box.landmarks`) travel with their box: interpolated, held and smoothed
the same way, kept as the detector placed them when the box is padded; dropped where a box without them
is averaged in.

Look-ahead: stage 1 holds at most `detect_every - 1` frames (those waiting for the next detection) and
stage 2 at most `SMOOTH_WINDOW` frames, so at most `detect_every + 4` frames are buffered at a time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
    takes_grey = True  # `detect` and `detect_near` also take a grey image (the pipeline's luma plane)
    NEAR_MARGIN = 1.0  # detect_near searches the last box grown by this many box sizes on each side
    NEAR_SIZES = (0.7, 1.4)  # ... for faces between these multiples of its size

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

    @property
    def fingerprint(self) -> str:
        """What decides this detector's output (the avatar cache keys on it); bump "v1" when the code does."""
        return (
            f"haar-v1 max_side={self._max_side} scale_factor={self._scale_factor} "
            f"min_neighbors={self._min_neighbors} near={self.NEAR_MARGIN}/{self.NEAR_SIZES}"
        )

    def detect_near(self, frame_bgr: np.ndarray, last: Box) -> list[Box]:
        """Faces of about `last`'s size in the region around it, largest first; ~5x cheaper than `detect`
        on a 1080p frame (a third of the scales, a fraction of the area). Empty means "ask `detect`"."""
        height, width = frame_bgr.shape[:2]
        scale = min(1.0, self._max_side / max(height, width))  # the same pixel scale `detect` works at
        region = _grown(last, self.NEAR_MARGIN, frame_bgr.shape)
        grey = _grey_at(frame_bgr[region.y1 : region.y2, region.x1 : region.x2], scale)
        low, high = (max(24, round(last.width * scale * k)) for k in self.NEAR_SIZES)
        found = self._cascade.detectMultiScale(
            grey,
            scaleFactor=self._scale_factor,
            minNeighbors=self._min_neighbors,
            minSize=(low, low),
            maxSize=(high, high),
        )
        boxes = [_scaled_box(x, y, w, h, scale, region) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes, key=lambda b: b.width * b.height, reverse=True)


def _small_grey(frame_bgr: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    height, width = frame_bgr.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    return _grey_at(frame_bgr, scale), scale


def _grey_at(image_bgr: np.ndarray, scale: float) -> np.ndarray:
    # luma is limited range (16-235) where BGR's grey is full: the cascade normalises each window by its
    # own contrast, so that changes nothing but rounding
    grey = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    if scale < 1.0:
        height, width = grey.shape
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey


def _grown(box: Box, margin: float, shape: tuple[int, ...]) -> Box:
    """`box` grown by `margin` times its size on every side, clamped to the image."""
    height, width = shape[:2]
    dx, dy = round(box.width * margin), round(box.height * margin)
    return Box(max(0, box.x1 - dx), max(0, box.y1 - dy), min(width, box.x2 + dx), min(height, box.y2 + dy))


def _scaled_box(x: int, y: int, w: int, h: int, scale: float, origin: Box | None = None) -> Box:
    ox, oy = (origin.x1, origin.y1) if origin else (0, 0)
    return Box(
        ox + round(x / scale), oy + round(y / scale), ox + round((x + w) / scale), oy + round((y + h) / scale)
    )


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
    padded = (max(0, box.x1), max(0, box.y1), min(width, box.x2), min(height, box.y2 + PAD_BOTTOM))
    return Box(*padded, landmarks=box.landmarks)  # the points stay where the detector saw them


class DetectionMemo(Protocol):
    """What the detector found in source frame `index` (the avatar cache implements it)."""

    def get(self, index: int) -> list[Box] | None:
        """The boxes seen in that frame before, or None when it was never run there."""
        ...

    def put(self, index: int, boxes: list[Box]) -> None: ...


@dataclass
class TrackStats:
    """Counters the pipeline reads after (or during) tracking."""

    frames: int = 0
    detector_calls: int = 0  # real detector runs; answers from the memo are `memo_hits`
    memo_hits: int = 0
    no_face_frames: int = 0
    detector_seconds: float = 0.0


class FaceTracker:
    """Streams (frame, FaceCrop) pairs in order; see the module docstring for the look-ahead."""

    def __init__(
        self,
        detector: FaceDetector,
        *,
        detect_every: int = 5,
        max_gap: int = 12,
        memo: DetectionMemo | None = None,
    ) -> None:
        if detect_every < 1 or max_gap < 0:
            raise ValueError("detect_every must be >= 1 and max_gap >= 0")
        self.detector = detector
        self.detect_every = detect_every
        self.max_gap = max_gap
        self.memo = memo
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
            boxes = self._boxes(index, frame, None if state.lost else state.last)
            yield from self._on_detection(state, index, frame, _pick(boxes, state.last))
        yield from state.flush_held(self.max_gap)

    def _due(self, state: _RawState, index: int) -> bool:
        return state.last is None or state.lost or index - state.last_index >= self.detect_every

    def _boxes(self, index: int, frame: np.ndarray, near: Box | None) -> list[Box]:
        """The memo's answer for this frame, else the detector's (remembered for next time)."""
        if self.memo is not None and (known := self.memo.get(index)) is not None:
            self.stats.memo_hits += 1
            return known
        started = time.perf_counter()
        boxes = self._run_detector(frame, near)
        self.stats.detector_calls += 1
        self.stats.detector_seconds += time.perf_counter() - started
        if self.memo is not None:
            self.memo.put(index, boxes)
        return boxes

    def _run_detector(self, frame: np.ndarray, near: Box | None) -> list[Box]:
        detect_near = getattr(self.detector, "detect_near", None)
        if near is not None and detect_near is not None and (found := detect_near(frame, near)):
            return list(found)
        return self.detector.detect(frame)

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
    """Between two detections; landmarks too when both have them."""
    va, vb = _vector(a), _vector(b)
    if len(va) != len(vb):
        va, vb = va[:4], vb[:4]
    return _from_vector(np.array([round(p + (q - p) * t) for p, q in zip(va, vb, strict=True)]))


def _coords(box: Box) -> tuple[int, int, int, int]:
    return box.x1, box.y1, box.x2, box.y2


def _vector(box: Box) -> tuple[int, ...]:
    """The box's corners, then its landmarks when it has them: what interpolation and smoothing average."""
    return _coords(box) + (box.landmarks or ())


def _from_vector(values: np.ndarray) -> Box:
    x1, y1, x2, y2, *points = (int(v) for v in values)
    return Box(x1, y1, x2, y2, tuple(points) or None)


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
        self.waiting.append((frame, np.array(_vector(box), dtype=np.int64)))
        if len(self.waiting) == self.window:
            first, _ = self.waiting[0]
            smoothed = _mean_int([coords for _, coords in self.waiting])
            self.waiting.popleft()
            self.done.append(smoothed)
            yield first, _from_vector(smoothed)

    def finish(self) -> Iterator[tuple[np.ndarray, Box]]:
        need = self.window - len(self.waiting)  # >= 1: push never leaves a full window waiting
        boxes = list(self.done)[-need:] + [coords for _, coords in self.waiting]
        first = len(boxes) - len(self.waiting)
        for offset, (frame, _) in enumerate(self.waiting):
            boxes[first + offset] = _mean_int(boxes)
            yield frame, _from_vector(boxes[first + offset])
        self.waiting.clear()
        self.done.clear()


def _mean_int(boxes: list[np.ndarray]) -> np.ndarray:
    """The mean, truncated as the reference's int array does; landmarks only if every box has them."""
    if len({len(box) for box in boxes}) > 1:
        boxes = [box[:4] for box in boxes]
    mean: np.ndarray = np.mean(boxes, axis=0).astype(np.int64)
    return mean


def track_faces(
    frames: Iterable[np.ndarray], detector: FaceDetector, *, detect_every: int = 5, max_gap: int = 12
) -> Iterator[Tracked]:
    """Convenience for `FaceTracker(...).track(frames)` when the counters are not needed."""
    return FaceTracker(detector, detect_every=detect_every, max_gap=max_gap).track(frames)


def detector_fingerprint(detector: FaceDetector) -> str:
    """A string that changes whenever the detector's output may: its `fingerprint` when it has one,
    else its name, class and plain settings (numbers and strings among its public attributes)."""
    own = getattr(detector, "fingerprint", None)
    if isinstance(own, str):
        return own
    plain = {
        key: value
        for key, value in sorted(vars(detector).items())
        if not key.startswith("_") and isinstance(value, int | float | str | bool | type(None))
    }
    settings = " ".join(f"{key}={value}" for key, value in plain.items())
    return f"{detector.name} {type(detector).__qualname__} {settings}".strip()
