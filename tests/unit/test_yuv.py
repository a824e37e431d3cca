"""yuv.py: colour conversion of a region, and the face blended into the planes in place."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.render.blend import mouth_mask
from daemon.render.types import Box
from daemon.render.yuv import YuvDetector, YuvFrame, bgr_to_yuv, even_region, paste_yuv, yuv_to_bgr


def textured(width: int, height: int, seed: int = 0) -> YuvFrame:
    frame = YuvFrame.blank(width, height)
    rng = np.random.default_rng(seed)
    frame.buffer[:] = rng.integers(40, 200, frame.buffer.shape, np.uint8)
    return frame


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_bgr_to_yuv_and_back_is_within_one_level(matrix: str) -> None:
    bgr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    y, u, v = (np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in bgr_to_yuv(bgr, matrix))
    assert int(y.min()) >= 16  # limited range
    assert int(y.max()) <= 235
    assert np.abs(yuv_to_bgr(y, u, v, matrix).astype(int) - bgr).max() <= 2  # 8-bit rounding of Y, Cb, Cr


def test_white_is_235_and_neutral() -> None:
    y, u, v = bgr_to_yuv(np.full((2, 2, 3), 255, np.uint8), "bt601")
    assert np.allclose(y, 235)
    assert np.allclose(np.stack([u, v]), 128)


def test_paste_changes_only_where_the_mask_reaches_and_keeps_the_rest_exactly() -> None:
    frame = textured(101, 75)  # odd size: planes padded to 102 x 76
    before = frame.copy()
    box = Box(21, 13, 61, 57)  # odd corners: the chroma blocks straddle the box's edges
    mask = mouth_mask(box.width, box.height)
    paste_yuv(frame, box, np.full((96, 96, 3), 255, np.uint8), mask)
    changed = frame.y != before.y
    rows, cols = np.nonzero(changed)
    assert (rows.min(), cols.min()) >= (box.y1, box.x1)
    assert rows.max() < box.y2
    assert cols.max() < box.x2
    inside = frame.y[box.y1 : box.y2, box.x1 : box.x2]
    assert np.all(inside[mask[..., 0] == 1.0] == 235)  # full weight: the face's own white
    assert np.array_equal(frame.y[mask_zero(box, mask, frame)], before.y[mask_zero(box, mask, frame)])
    region = even_region(box, frame)
    for plane, old in ((frame.u, before.u), (frame.v, before.v)):
        outside = np.ones(plane.shape, bool)
        outside[region.y1 // 2 : region.y2 // 2, region.x1 // 2 : region.x2 // 2] = False
        assert np.array_equal(plane[outside], old[outside])
        assert np.any(plane != old)  # the white face pulls the chroma to neutral under the mouth


def mask_zero(box: Box, mask: np.ndarray, frame: YuvFrame) -> np.ndarray:
    """Luma pixels the mask gives no weight (inside the box where it is 0, and everything outside)."""
    zero = np.ones(frame.y.shape, bool)
    zero[box.y1 : box.y2, box.x1 : box.x2] = mask[..., 0] == 0
    return zero


def test_a_box_past_the_frames_edge_is_clipped() -> None:
    frame = textured(64, 48)
    before = frame.copy()
    paste_yuv(frame, Box(40, 30, 80, 70), np.zeros((96, 96, 3), np.uint8), np.ones((40, 40, 1), np.float32))
    assert np.all(frame.y[30:48, 40:64] == 16)  # black, where the box is visible
    assert np.array_equal(frame.y[:30], before.y[:30])


def test_region_to_bgr_is_the_same_as_that_part_of_the_whole_frame() -> None:
    frame = textured(64, 48, seed=3)
    region = even_region(Box(9, 7, 33, 29), frame)
    assert (region.x1, region.y1, region.x2, region.y2) == (8, 6, 34, 30)
    whole = frame.to_bgr()
    part = frame.to_bgr(region)
    inner = part[2:-2, 2:-2].astype(int)  # chroma interpolation differs at the region's own border
    assert np.abs(inner - whole[region.y1 + 2 : region.y2 - 2, region.x1 + 2 : region.x2 - 2]).max() <= 1


class ScaledDetector:
    """Poses as S3FD/YuNet: records what `detect_scaled` is shown."""

    name = "scaled"
    max_side = 64

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[int, ...], float, tuple[int, ...]]] = []

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        raise AssertionError("the full-size detect must not be called on planes")

    def detect_scaled(self, small: np.ndarray, scale: float, shape: tuple[int, ...]) -> list[Box]:
        self.seen.append((small.shape, scale, shape))
        return [Box(1, 2, 3, 4)]


class GreyDetector:
    """Poses as Haar: takes grey images."""

    name = "grey"
    takes_grey = True

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def detect(self, frame: np.ndarray) -> list[Box]:
        self.seen.append(frame.shape)
        return []

    def detect_near(self, frame: np.ndarray, last: Box) -> list[Box]:
        self.seen.append(frame.shape)
        return [last]


def test_scaled_detectors_get_a_small_bgr_made_from_downscaled_planes() -> None:
    inner = ScaledDetector()
    boxes = YuvDetector(inner).detect(textured(257, 191))
    assert boxes == [Box(1, 2, 3, 4)]
    assert inner.seen == [((48, 64, 3), 64 / 257, (191, 257, 3))]


def test_grey_detectors_get_the_luma_plane_without_its_padding() -> None:
    inner = GreyDetector()
    detector = YuvDetector(inner)
    frame = textured(101, 75)
    assert detector.detect(frame) == []
    assert detector.detect_near(frame, Box(1, 1, 9, 9)) == [Box(1, 1, 9, 9)]
    assert inner.seen == [(75, 101), (75, 101)]
    assert "frames=yuv420p" in detector.fingerprint  # detections cached from BGR frames are not replayed


def test_the_frames_budget_counts_planes_at_one_and_a_half_bytes_a_pixel() -> None:
    from daemon.render.pipeline import RenderSettings

    settings = RenderSettings()  # 256 MB for (queue_batches + 3) = 4 batches in flight
    assert settings.batch_for(1920, 1080) == 16  # 3.1 MB a frame: the whole batch fits (BGR: 10)
    assert settings.batch_for(3840, 2160) == 5  # 12.4 MB a frame
    assert settings.batch_for(3839, 2159) == 5  # odd sizes count their even padding
