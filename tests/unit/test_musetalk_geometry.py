"""MuseTalk's per-frame geometry: the box from a detector box, the 256 crop, the VAE inputs, the blend."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.render.musetalk import (
    NOSE_AT,
    MuseTalkModel,
    crop_256,
    lower_face_mask,
    musetalk_box,
    to_bgr,
    unet_latents,
    vae_inputs,
)
from daemon.render.types import Box

FRAME = (480, 640, 3)


def test_box_runs_from_nose_minus_chin_to_nose_down_to_the_padded_chin() -> None:
    tracked = Box(100, 50, 200, 160)  # the tracker's box: the detector's, 10 px added at the bottom
    chin = 150
    nose = 50 + NOSE_AT * (chin - 50)
    assert musetalk_box(tracked, FRAME) == Box(100, round(nose - (chin - nose)), 200, 160)


def test_box_is_clamped_to_the_frame() -> None:
    top = musetalk_box(Box(10, 0, 60, 40), FRAME)
    assert top.y1 >= 0
    assert top.y2 == 40
    bottom = musetalk_box(Box(10, 430, 90, 480), FRAME)  # the pad was cut at the frame's edge
    assert bottom.y2 == 480
    assert 430 <= bottom.y1 < 480


def test_crop_is_the_box_resized_to_256_upright() -> None:
    frame = np.zeros(FRAME, np.uint8)
    box = Box(100, 50, 200, 160)
    face = musetalk_box(box, FRAME)
    middle = (face.y1 + face.y2) // 2
    frame[face.y1 : middle, face.x1 : face.x2] = (0, 0, 255)  # red above the middle
    frame[middle : face.y2, face.x1 : face.x2] = (255, 0, 0)  # blue below
    crop = crop_256(frame, box)
    assert crop.shape == (256, 256, 3)
    assert crop.dtype == np.uint8
    assert np.all(crop[:100] == (0, 0, 255))
    assert np.all(crop[156:] == (255, 0, 0))


def test_vae_inputs_mask_the_lower_half_to_minus_one_and_turn_bgr_into_rgb() -> None:
    blue = np.zeros((256, 256, 3), np.uint8)
    blue[..., 0] = 255  # BGR blue
    grey = np.full((256, 256, 3), 51, np.uint8)
    images = vae_inputs([blue, grey])
    assert images.shape == (4, 3, 256, 256)
    assert images.dtype == np.float32
    masked, full = images[:2], images[2:]
    assert np.all(masked[:, :, 128:] == -1.0)
    np.testing.assert_array_equal(masked[:, :, :128], full[:, :, :128])
    assert np.all(full[0, 2] == 1.0)
    assert np.all(full[0, :2] == -1.0)
    np.testing.assert_allclose(full[1], 51 / 255 * 2 - 1, atol=1e-6)


def test_unet_latents_put_masked_then_full_on_channels() -> None:
    latents = np.arange(4 * 4 * 32 * 32, dtype=np.float32).reshape(4, 4, 32, 32)
    joined = unet_latents(latents)
    assert joined.shape == (2, 8, 32, 32)
    np.testing.assert_array_equal(joined[1, :4], latents[1])
    np.testing.assert_array_equal(joined[1, 4:], latents[3])


def test_decoded_rgb_becomes_clipped_bgr() -> None:
    images = np.zeros((1, 3, 256, 256), np.float32)
    images[0, 0] = 1.5  # red, out of range
    face = to_bgr(images)[0]
    assert face.shape == (256, 256, 3)
    assert np.all(face[..., 2] == 255)
    assert np.all(face[..., :2] == 0)


@pytest.mark.parametrize(("width", "height"), [(100, 110), (240, 260), (37, 41)])
def test_mask_covers_the_lower_face_only_and_is_feathered(width: int, height: int) -> None:
    mask = lower_face_mask(width, height)[..., 0]
    assert mask.shape == (height, width)
    assert not mask.flags.writeable
    assert np.all(mask[: height // 2 + 1] == 0)  # the upper half of the square crop is kept
    assert np.all(mask[:, 0] == 0)
    assert np.all(mask[:, -1] == 0)
    assert np.all(mask[-1] == 0)
    assert mask[round(height * 0.75), width // 2] == pytest.approx(1.0, abs=1e-6)
    row = mask[round(height * 0.75)]
    ramp = np.count_nonzero((row > 0.01) & (row < 0.99)) / 2  # columns the feather takes on one side
    side = 1.5 * max(width, height)
    assert 0.02 * side <= ramp <= 0.06 * side
    assert np.abs(np.diff(row)).max() <= 0.5  # soft: never straight from 0 to 1


def test_paste_changes_only_the_lower_face_and_leaves_the_input_alone() -> None:
    model = object.__new__(MuseTalkModel)  # paste needs no open graphs
    frame = np.zeros(FRAME, np.uint8)
    box = Box(200, 100, 320, 250)
    out = model.paste(frame, box, np.full((256, 256, 3), 255, np.uint8))
    face = musetalk_box(box, FRAME)
    assert not frame.any()
    changed = np.nonzero(out.any(axis=2))
    assert changed[0].min() > (face.y1 + face.y2) // 2
    assert changed[0].max() < face.y2
    assert changed[1].min() > face.x1
    assert changed[1].max() < face.x2 - 1
    assert np.all(out[round(face.y1 + 0.75 * face.height), (face.x1 + face.x2) // 2] == 255)


def _with_points(box: Box, eyes_y: int, nose_tip_y: int) -> Box:
    """Five landmarks: eyes, nose tip, mouth corners (only the eyes' and nose tip's heights matter)."""
    x = (box.x1 + box.x2) // 2
    return Box(
        box.x1,
        box.y1,
        box.x2,
        box.y2,
        (x - 20, eyes_y, x + 20, eyes_y, x, nose_tip_y, x - 15, 140, x + 15, 140),
    )


def test_with_landmarks_the_nose_bridge_lies_two_thirds_from_the_eyes_to_the_nose_tip() -> None:
    tracked = Box(100, 50, 200, 160)  # chin at 150
    level = _with_points(tracked, eyes_y=80, nose_tip_y=110)  # landmark 29 at 100: top = 100 - 50
    assert musetalk_box(level, FRAME) == Box(100, 50, 200, 160)
    bowed = _with_points(tracked, eyes_y=95, nose_tip_y=125)  # head bowed: the face sits lower in the box
    assert musetalk_box(bowed, FRAME) == Box(100, 80, 200, 160)  # 29 at 115: top = 115 - 35
    assert musetalk_box(tracked, FRAME).y1 == 60  # box only: 55% of the way, whatever the pose


def test_landmarks_outside_the_box_are_held_to_it() -> None:
    tracked = Box(100, 50, 200, 160)
    assert musetalk_box(_with_points(tracked, eyes_y=400, nose_tip_y=420), FRAME) == Box(100, 150, 200, 160)
    assert musetalk_box(_with_points(tracked, eyes_y=-90, nose_tip_y=-60), FRAME).y1 == 0
