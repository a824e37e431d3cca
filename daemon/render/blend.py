"""Paste the model's 96x96 face back into the frame, feathered over the mouth region only.

The model re-synthesises the lower half of the crop; pasting the whole square would show its edges and
any colour drift. A soft ellipse over the mouth and jaw (1 in its middle, falling to 0 well inside the
box) hides both: outside the ellipse the original frame is kept pixel for pixel.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from daemon.render.types import Box

# Ellipse in box-relative units (0..1): centre and semi-axes. Spans x 0.08..0.92, y 0.43..0.97.
CENTRE_X, CENTRE_Y = 0.5, 0.70
RADIUS_X, RADIUS_Y = 0.42, 0.27
SOLID = 0.55  # fraction of the radius that is fully the model's output; a cosine fall-off beyond


def paste_back(frame: np.ndarray, box: Box, face: np.ndarray) -> np.ndarray:
    """A copy of `frame` with `face` (96,96,3 BGR uint8) resized to `box` and feathered in."""
    if box.width <= 0 or box.height <= 0:
        return frame.copy()
    return paste_masked(frame, box, face, mouth_mask(box.width, box.height))


def paste_masked(frame: np.ndarray, box: Box, face: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of `frame` with `face` resized to `box`, mixed in by `mask` (box-sized, (h, w, 1), 0..1)."""
    out = frame.copy()
    if box.width <= 0 or box.height <= 0:
        return out
    resized = cv2.resize(face, (box.width, box.height)).astype(np.float32)
    region = _visible(box, frame.shape)
    rows, cols = slice(region.y1, region.y2), slice(region.x1, region.x2)
    inner = (slice(region.y1 - box.y1, region.y2 - box.y1), slice(region.x1 - box.x1, region.x2 - box.x1))
    original = frame[rows, cols].astype(np.float32)
    weight = mask[inner]
    mixed = original + (resized[inner] - original) * weight
    out[rows, cols] = np.clip(np.rint(mixed), 0, 255).astype(frame.dtype)
    return out


def _visible(box: Box, shape: tuple[int, ...]) -> Box:
    """The part of the box inside the frame (the tracker clamps boxes, this is a guard)."""
    height, width = shape[:2]
    return Box(max(0, box.x1), max(0, box.y1), min(width, box.x2), min(height, box.y2))


@lru_cache(maxsize=64)
def mouth_mask(width: int, height: int) -> np.ndarray:
    """(height, width, 1) float32 weights in [0, 1]; read-only because it is shared through the cache."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = ((xs + 0.5) / width - CENTRE_X) / RADIUS_X
    dy = ((ys + 0.5) / height - CENTRE_Y) / RADIUS_Y
    radius = np.sqrt(dx * dx + dy * dy)
    fall = np.clip((radius - SOLID) / (1.0 - SOLID), 0.0, 1.0)
    mask: np.ndarray = (0.5 + 0.5 * np.cos(np.pi * fall)).astype(np.float32)[..., None]
    mask.flags.writeable = False
    return mask
