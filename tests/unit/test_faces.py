"""Faces: the real Haar cascade on the astronaut photo, tracking, reference smoothing, padding, crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from daemon.render.detectors import YunetDetector
from daemon.render.faces import (
    DetectorFactory,
    FaceTracker,
    HaarDetector,
    crop_face,
    detector_by_name,
    pad_box,
    smooth_runs,
    track_faces,
)
from daemon.render.types import NOSE_TIP, Box

FACE_CENTRE = (224, 113)  # astronaut face centre in the 512x512 photo


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    photo: np.ndarray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return photo


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    return HaarDetector()


class ScriptedDetector:
    """A stand-in detector that returns a scripted box per frame (keyed by the frame's first pixel).

    Not a real detector on purpose: tracking must be tested against exact, known hits and misses,
    which no real detector gives on demand. The Haar tests below use the real cascade.
    """

    name = "scripted"

    def __init__(self, script: dict[int, Box]) -> None:
        self.script = script
        self.calls: list[int] = []

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        index = int(frame_bgr[0, 0, 0]) * 256 + int(frame_bgr[0, 0, 1])
        self.calls.append(index)
        box = self.script.get(index)
        return [] if box is None else [box]


def numbered_frames(count: int, shape: tuple[int, int] = (360, 640)) -> list[np.ndarray]:
    frames = []
    for index in range(count):
        frame = np.zeros((*shape, 3), np.uint8)
        frame[0, 0, :2] = divmod(index, 256)
        frames.append(frame)
    return frames


def reference_smoothened(boxes: list[list[int]], T: int = 5) -> np.ndarray:
    """Wav2Lip inference.py `get_smoothened_boxes`, verbatim (boxes is an int array there)."""
    boxes = np.array(boxes)  # type: ignore[assignment]  # (kept as the reference writes it)
    for i in range(len(boxes)):
        if i + T > len(boxes):  # noqa: SIM108  (kept as the reference writes it)
            window = boxes[len(boxes) - T :]
        else:
            window = boxes[i : i + T]
        boxes[i] = np.mean(window, axis=0)
    return boxes  # type: ignore[return-value]


@pytest.mark.parametrize("side", [200, 256, 384, 512, 720, 1080, 1600])
def test_haar_finds_the_face_at_several_sizes(astronaut: np.ndarray, haar: HaarDetector, side: int) -> None:
    frame = cv2.resize(astronaut, (side, side))
    boxes = haar.detect(frame)
    assert len(boxes) == 1
    centre_x = (boxes[0].x1 + boxes[0].x2) / 2 / side
    centre_y = (boxes[0].y1 + boxes[0].y2) / 2 / side
    assert abs(centre_x - FACE_CENTRE[0] / 512) < 0.03
    assert abs(centre_y - FACE_CENTRE[1] / 512) < 0.03
    assert 0.15 < boxes[0].width / side < 0.25


@pytest.mark.parametrize("crop", [150, 256, 360])
def test_haar_finds_the_face_zoomed_in_on_a_1080p_frame(
    astronaut: np.ndarray, haar: HaarDetector, crop: int
) -> None:
    x0 = min(512 - crop, max(0, FACE_CENTRE[0] - crop // 2))
    y0 = min(512 - crop, max(0, FACE_CENTRE[1] - crop // 2))
    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[:, 420:1500] = cv2.resize(astronaut[y0 : y0 + crop, x0 : x0 + crop], (1080, 1080))
    boxes = haar.detect(frame)
    assert boxes, f"no face at crop {crop}"
    expect_x = 420 + (FACE_CENTRE[0] - x0) * 1080 / crop
    expect_y = (FACE_CENTRE[1] - y0) * 1080 / crop
    assert abs((boxes[0].x1 + boxes[0].x2) / 2 - expect_x) < 0.05 * 1080
    assert abs((boxes[0].y1 + boxes[0].y2) / 2 - expect_y) < 0.05 * 1080


def test_haar_finds_nothing_in_a_blank_frame(haar: HaarDetector) -> None:
    assert haar.detect(np.full((720, 1280, 3), 128, np.uint8)) == []


def test_haar_tracks_a_panning_zooming_clip(astronaut: np.ndarray, haar: HaarDetector) -> None:
    frames = [cv2.resize(astronaut[0 : 512 - 4 * i, 2 * i : 512 - 2 * i], (480, 480)) for i in range(20)]
    tracker = FaceTracker(haar, detect_every=5)
    out = list(tracker.track(frames))
    assert [crop.index for _, crop in out] == list(range(20))
    assert tracker.stats.no_face_frames == 0
    assert tracker.stats.detector_calls == 4
    for i, (frame, crop) in enumerate(out):
        assert frame is frames[i]
        assert crop.box is not None
        scale = 480 / (512 - 4 * i)
        expect_x = (FACE_CENTRE[0] - 2 * i) * scale
        assert abs((crop.box.x1 + crop.box.x2) / 2 - expect_x) < 12


def test_tracking_interpolates_between_detections() -> None:
    script = {0: Box(100, 100, 200, 200), 5: Box(150, 120, 250, 220), 10: Box(150, 120, 250, 220)}
    detector = ScriptedDetector(script)
    tracker = FaceTracker(detector, detect_every=5)
    raw = list(tracker._raw(numbered_frames(11)))
    assert detector.calls == [0, 5, 10]
    assert [box for _, box in raw][:6] == [
        Box(100, 100, 200, 200),
        Box(110, 104, 210, 204),
        Box(120, 108, 220, 208),
        Box(130, 112, 230, 212),
        Box(140, 116, 240, 216),
        Box(150, 120, 250, 220),
    ]


def test_tracking_holds_the_box_through_a_short_miss_and_redetects_every_frame() -> None:
    box = Box(100, 100, 200, 200)
    script = {0: box, 9: Box(110, 100, 210, 200)}  # misses at 5..8
    detector = ScriptedDetector(script)
    raw = [b for _, b in FaceTracker(detector, detect_every=5, max_gap=12)._raw(numbered_frames(12))]
    assert detector.calls == [0, 5, 6, 7, 8, 9]
    assert raw[:9] == [box] * 9
    assert raw[9] == Box(110, 100, 210, 200)


def test_tracking_gives_none_after_a_long_gap_and_counts_it() -> None:
    box = Box(100, 100, 200, 200)
    detector = ScriptedDetector({0: box, 30: box})
    tracker = FaceTracker(detector, detect_every=5, max_gap=12)
    out = [crop.box for _, crop in tracker.track(numbered_frames(32))]
    assert all(b is not None for b in out[:13])
    assert out[13:30] == [None] * 17
    assert out[30] is not None
    assert out[31] is not None
    assert tracker.stats.no_face_frames == 17
    assert tracker.stats.frames == 32


def test_no_face_at_all_passes_every_frame_through() -> None:
    frames = numbered_frames(7)
    out = list(track_faces(frames, ScriptedDetector({})))
    assert [crop.box for _, crop in out] == [None] * 7
    assert all(a is b for (a, _), b in zip(out, frames, strict=True))


def test_smoothing_matches_the_reference_on_runs() -> None:
    rng = np.random.default_rng(7)
    coords = rng.integers(0, 400, size=(23, 4)).tolist()
    run_a, run_b = coords[:12], coords[12:]
    items: list[tuple[np.ndarray, Box | None]] = [(np.zeros(1), Box(*c)) for c in run_a]
    items += [(np.zeros(1), None)] * 3 + [(np.zeros(1), Box(*c)) for c in run_b]
    got = [box for _, box in smooth_runs(items)]
    expected: list[Box | None] = [Box(*c) for c in reference_smoothened(run_a).tolist()]
    expected += [None] * 3 + [Box(*c) for c in reference_smoothened(run_b).tolist()]
    assert got == expected


def test_smoothing_is_the_forward_five_frame_mean() -> None:
    xs = [0, 10, 20, 30, 40, 50, 60]
    items: list[tuple[np.ndarray, Box | None]] = [(np.zeros(1), Box(x, 0, x + 100, 100)) for x in xs]
    got = [box.x1 for _, box in smooth_runs(items) if box is not None]
    assert got[:3] == [20, 30, 40]


def test_short_run_is_averaged_over_itself() -> None:
    items: list[tuple[np.ndarray, Box | None]] = [(np.zeros(1), Box(x, 0, x + 10, 10)) for x in (0, 3)]
    assert [box.x1 for _, box in smooth_runs(items) if box is not None] == [1, 2]


def test_padding_is_ten_pixels_at_the_bottom_clamped() -> None:
    assert pad_box(Box(10, 20, 110, 120), (360, 640, 3)) == Box(10, 20, 110, 130)
    assert pad_box(Box(-5, -3, 650, 355), (360, 640, 3)) == Box(0, 0, 640, 360)


def test_tracker_pads_before_smoothing() -> None:
    box = Box(100, 300, 200, 355)
    detector = ScriptedDetector({i: box for i in range(10)})
    out = [crop.box for _, crop in FaceTracker(detector, detect_every=1).track(numbered_frames(10))]
    assert out == [Box(100, 300, 200, 360)] * 10


def test_crop_face_is_96_square_bgr(astronaut: np.ndarray) -> None:
    crop = crop_face(astronaut, Box(176, 65, 272, 171))
    assert crop.shape == (96, 96, 3)
    assert crop.dtype == np.uint8
    assert np.array_equal(crop_face(astronaut, Box(0, 0, 96, 96)), astronaut[:96, :96])


def test_detector_by_name(tmp_path: Path) -> None:
    assert detector_by_name("haar", tmp_path).name == "haar"
    with pytest.raises(ValueError, match="unknown face detector 'x'; choose haar, s3fd or yunet"):
        detector_by_name("x", tmp_path)
    custom: dict[str, DetectorFactory] = {"scripted": lambda models_dir: ScriptedDetector({})}
    assert detector_by_name("scripted", tmp_path, custom).name == "scripted"


def _marked(x: int, y: int) -> Box:
    """A 100x100 box at (x, y) with five landmarks at fixed places inside it."""
    points = (30, 40, 70, 40, 50, 60, 35, 80, 65, 80)
    return Box(x, y, x + 100, y + 100, landmarks=tuple(p + (x, y)[i % 2] for i, p in enumerate(points)))


def test_landmarks_travel_with_their_box_through_interpolation_padding_and_smoothing() -> None:
    script = {i: _marked(100 + 6 * i, 50 + 2 * i) for i in range(0, 21, 5)}
    detector = ScriptedDetector(script)
    tracked = list(FaceTracker(detector, detect_every=5).track(numbered_frames(21)))
    assert detector.calls == [0, 5, 10, 15, 20]
    for _, crop in tracked:
        box = crop.box
        assert box is not None
        assert box.landmarks is not None
        assert box.height == 110
        # the points keep their place in the face, though the box moved, was padded and smoothed
        nose = box.point(2)
        assert nose is not None
        assert abs(nose[0] - box.x1 - 50) <= 1
        assert abs(nose[1] - box.y1 - 60) <= 1
    assert tracked[3][1].box != tracked[2][1].box  # interpolated frames moved their points too


def test_a_box_without_landmarks_drops_them_from_the_average() -> None:
    frames = numbered_frames(3)
    boxes = [_marked(100, 100), Box(100, 100, 200, 200), _marked(100, 100)]
    smoothed = [box for _, box in smooth_runs(zip(frames, boxes, strict=True))]
    assert all(box is not None and box.landmarks is None for box in smoothed)
    assert smoothed[0] == Box(100, 100, 200, 200)


class _FakeYn:
    """Stands in for cv2.FaceDetectorYN (no YuNet file here): one face in the downscaled frame."""

    def setInputSize(self, size: tuple[int, int]) -> None:
        self.size = size

    def detect(self, image: np.ndarray) -> tuple[int, np.ndarray]:
        x, y, w, h = 100, 50, 80, 100
        points = [120, 80, 160, 80, 140, 110, 125, 130, 155, 130]  # eyes, nose tip, mouth corners
        return 1, np.array([[x, y, w, h, *points, 0.9]], np.float32)


def test_yunet_keeps_its_five_landmarks_in_full_frame_pixels() -> None:
    detector = YunetDetector.__new__(YunetDetector)
    detector._yn, detector.max_side = _FakeYn(), 640  # type: ignore[assignment]
    (box,) = detector.detect(np.zeros((720, 1280, 3), np.uint8))  # scaled to 640x360: coordinates x2
    assert box == Box(200, 100, 360, 300, landmarks=(240, 160, 320, 160, 280, 220, 250, 260, 310, 260))
    assert box.point(NOSE_TIP) == (280, 220)
