"""paste_back: the face lands inside the box only, feathered, and the input frame is never changed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from daemon.render.blend import mouth_mask, paste_back
from daemon.render.types import Box


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    photo: np.ndarray = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (1280, 720))
    return photo


def outside(mask_shape: tuple[int, ...], box: Box) -> np.ndarray:
    keep = np.ones(mask_shape[:2], bool)
    keep[box.y1 : box.y2, box.x1 : box.x2] = False
    return keep


def test_pixels_outside_the_box_are_untouched_and_input_is_kept(frame: np.ndarray) -> None:
    before = frame.copy()
    box = Box(400, 150, 650, 420)
    out = paste_back(frame, box, np.full((96, 96, 3), 255, np.uint8))
    assert np.array_equal(frame, before)
    assert out is not frame
    assert out.shape == frame.shape
    assert out.dtype == np.uint8
    keep = outside(frame.shape, box)
    assert np.array_equal(out[keep], frame[keep])
    assert not np.array_equal(out, frame)


def test_mouth_region_takes_the_model_output(frame: np.ndarray) -> None:
    box = Box(400, 150, 640, 390)
    face = np.zeros((96, 96, 3), np.uint8)
    face[..., 2] = 200
    out = paste_back(frame, box, face)
    centre = out[box.y1 + int(0.7 * box.height), box.x1 + box.width // 2]
    assert centre.tolist() == [0, 0, 200]
    top = box.y1 + int(0.3 * box.height)
    assert np.array_equal(out[box.y1 : top, box.x1 : box.x2], frame[box.y1 : top, box.x1 : box.x2])


@pytest.mark.parametrize("size", [(96, 106), (180, 190), (400, 410)])
def test_no_hard_edges(size: tuple[int, int]) -> None:
    width, height = size
    black = np.zeros((height + 40, width + 40, 3), np.uint8)
    box = Box(20, 20, 20 + width, 20 + height)
    out = paste_back(black, box, np.full((96, 96, 3), 255, np.uint8)).astype(np.int32)
    assert out[box.y1 : box.y2, box.x1].max() == 0
    assert out[box.y1 : box.y2, box.x2 - 1].max() == 0
    assert out[box.y1, box.x1 : box.x2].max() == 0
    assert out[box.y2 - 1, box.x1 : box.x2].max() == 0
    step = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert out.max() == 255
    assert step <= 0.15 * 255 * 106 / height + 1  # a hard paste would step by 255 in one pixel


def test_mask_is_cached_and_read_only() -> None:
    first = mouth_mask(120, 130)
    assert mouth_mask(120, 130) is first
    assert first.shape == (130, 120, 1)
    assert first.dtype == np.float32
    assert not first.flags.writeable
    assert first.min() == 0.0
    assert first.max() == 1.0


def test_box_partly_outside_the_frame_is_clipped(frame: np.ndarray) -> None:
    box = Box(1200, 600, 1400, 800)
    out = paste_back(frame, box, np.full((96, 96, 3), 255, np.uint8))
    keep = outside(frame.shape, box)
    assert np.array_equal(out[keep], frame[keep])
    assert out.shape == frame.shape


def test_empty_box_changes_nothing(frame: np.ndarray) -> None:
    assert np.array_equal(paste_back(frame, Box(10, 10, 10, 50), np.zeros((96, 96, 3), np.uint8)), frame)
