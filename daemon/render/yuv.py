"""Frames as yuv420p planes, the way the decoder gives them and the encoder takes them.

The render pipeline never converts a whole frame to BGR: the tracker looks at the luma plane (or a small
BGR copy made from downscaled planes), only the face region is turned into BGR for the model, and the
model's face is blended back into the planes in place (luma at full resolution, chroma at half, with
the mask averaged over each 2x2 block). A pixel the mask does not touch keeps its decoded value exactly.

Levels are limited range ("TV", 16-235 luma); the matrix is the source's own (BT.601, or BT.709 when
the source says so), and the encoder tags the output with it, so the face region converts back with the
same matrix it was converted with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from daemon.render.types import Box, FaceDetector

# Kr, Kb of the luma matrices (ITU-R BT.601 and BT.709)
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def even(n: int) -> int:
    return n + (n & 1)


@dataclass
class YuvFrame:
    """One picture as yuv420p: `buffer` holds Y then U then V (I420), the planes are views into it.

    The planes are even-sized: an odd width or height is padded by repeating the last column or row of
    luma (as the encoder padded BGR frames before), so `width` x `height` is the picture and the
    encoder writes the even size. `shape` is (height, width, 3): the BGR image this frame stands for,
    so box geometry written for BGR frames works unchanged."""

    buffer: np.ndarray  # (even_h * even_w * 3 // 2,) uint8
    width: int
    height: int
    matrix: str = "bt601"

    @classmethod
    def blank(cls, width: int, height: int, matrix: str = "bt601") -> YuvFrame:
        return cls(np.empty(even(width) * even(height) * 3 // 2, np.uint8), width, height, matrix)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, 3

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    @property
    def y(self) -> np.ndarray:
        w, h = even(self.width), even(self.height)
        return self.buffer[: w * h].reshape(h, w)

    @property
    def u(self) -> np.ndarray:
        w, h = even(self.width), even(self.height)
        return self.buffer[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)

    @property
    def v(self) -> np.ndarray:
        w, h = even(self.width), even(self.height)
        return self.buffer[w * h * 5 // 4 :].reshape(h // 2, w // 2)

    @property
    def luma(self) -> np.ndarray:
        """The picture's luma (a view, without the padding)."""
        return self.y[: self.height, : self.width]

    def copy(self) -> YuvFrame:
        return replace(self, buffer=self.buffer.copy())

    def pad_luma(self) -> None:
        """Repeat the last luma column/row into the padding of an odd-sized picture."""
        y = self.y
        if self.width & 1:
            y[:, self.width] = y[:, self.width - 1]
        if self.height & 1:
            y[self.height, :] = y[self.height - 1, :]

    def to_bgr(self, region: Box | None = None) -> np.ndarray:
        """BGR uint8 of `region` (even corners, see `even_region`), or of the whole picture (tests and
        detectors that take only BGR: a full conversion)."""
        whole = Box(0, 0, even(self.width), even(self.height))
        r = region or whole
        y = self.y[r.y1 : r.y2, r.x1 : r.x2]
        u = self.u[r.y1 // 2 : r.y2 // 2, r.x1 // 2 : r.x2 // 2]
        v = self.v[r.y1 // 2 : r.y2 // 2, r.x1 // 2 : r.x2 // 2]
        size = (r.width, r.height)
        bgr = yuv_to_bgr(y, cv2.resize(u, size), cv2.resize(v, size), self.matrix)
        return bgr if region else np.ascontiguousarray(bgr[: self.height, : self.width])

    def small_bgr(self, max_side: int | None) -> tuple[np.ndarray, float]:
        """A BGR copy no bigger than `max_side` on its longer side, made from downscaled planes (never a
        full-size conversion), and its scale: what S3FD and YuNet work on anyway."""
        scale = 1.0 if max_side is None else min(1.0, max_side / max(self.width, self.height))
        size = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
        cw, ch = (self.width + 1) // 2, (self.height + 1) // 2
        y, u, v = (
            cv2.resize(plane, size, interpolation=cv2.INTER_AREA) if plane.shape[::-1] != size else plane
            for plane in (self.luma, self.u[:ch, :cw], self.v[:ch, :cw])
        )
        return yuv_to_bgr(y, u, v, self.matrix), scale


def even_region(box: Box, frame: YuvFrame) -> Box:
    """`box` grown to even corners (whole chroma samples), clamped to the padded planes."""
    w, h = even(frame.width), even(frame.height)
    x1, y1 = max(0, box.x1) & ~1, max(0, box.y1) & ~1
    return Box(x1, y1, min(w, even(box.x2)), min(h, even(box.y2)))


def yuv_to_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray, matrix: str) -> np.ndarray:
    """Limited-range planes of one size -> BGR uint8."""
    kr, kb = MATRICES[matrix]
    ey = (y.astype(np.float32) - 16.0) * (255.0 / 219.0)
    pb = (u.astype(np.float32) - 128.0) * (255.0 / 224.0)
    pr = (v.astype(np.float32) - 128.0) * (255.0 / 224.0)
    r = ey + 2.0 * (1.0 - kr) * pr
    b = ey + 2.0 * (1.0 - kb) * pb
    g = (ey - kr * r - kb * b) / (1.0 - kr - kb)
    bgr: np.ndarray = np.clip(np.rint(np.dstack([b, g, r])), 0, 255).astype(np.uint8)
    return bgr


def bgr_to_yuv(bgr: np.ndarray, matrix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BGR uint8 -> limited-range float32 Y, Cb, Cr at the same resolution (not rounded)."""
    kr, kb = MATRICES[matrix]
    b, g, r = (bgr[..., i].astype(np.float32) for i in range(3))
    ey = kr * r + (1.0 - kr - kb) * g + kb * b
    cb = (b - ey) / (2.0 * (1.0 - kb))
    cr = (r - ey) / (2.0 * (1.0 - kr))
    return 16.0 + ey * (219.0 / 255.0), 128.0 + cb * (224.0 / 255.0), 128.0 + cr * (224.0 / 255.0)


def paste_yuv(frame: YuvFrame, box: Box, face: np.ndarray, mask: np.ndarray) -> None:
    """Blend `face` (BGR, any size), resized to `box`, into the frame's planes in place, weighted by
    `mask` (box-sized (h, w, 1) in 0..1): luma per pixel, chroma per 2x2 block with the block's mean
    weight and the face's mean colour. Where the weight is 0 the planes keep their values exactly."""
    if box.width <= 0 or box.height <= 0:
        return
    region = even_region(box, frame)
    canvas = np.zeros((region.height, region.width, 3), np.uint8)
    weight = np.zeros((region.height, region.width), np.float32)
    visible = Box(max(box.x1, 0), max(box.y1, 0), min(box.x2, frame.width), min(box.y2, frame.height))
    inner = _within(visible, box)
    at = _within(visible, region)
    canvas[at] = cv2.resize(face, (box.width, box.height))[inner]
    weight[at] = mask[inner][..., 0]
    fy, fu, fv = bgr_to_yuv(canvas, frame.matrix)
    _mix(frame.y[region.y1 : region.y2, region.x1 : region.x2], fy, weight)
    half = (region.width // 2, region.height // 2)
    chroma_weight = cv2.resize(weight, half, interpolation=cv2.INTER_AREA)
    # the face's colour averaged over each block, counting only the face's own pixels
    covered = np.zeros_like(weight)
    covered[at] = 1.0
    area = np.maximum(cv2.resize(covered, half, interpolation=cv2.INTER_AREA), 1e-6)
    rows, cols = slice(region.y1 // 2, region.y2 // 2), slice(region.x1 // 2, region.x2 // 2)
    for plane, full in ((frame.u, fu), (frame.v, fv)):
        mean = cv2.resize(full * covered, half, interpolation=cv2.INTER_AREA) / area
        _mix(plane[rows, cols], mean, chroma_weight)


def _within(part: Box, whole: Box) -> tuple[slice, slice]:
    """`part`'s rows and columns in `whole`'s own coordinates."""
    return slice(part.y1 - whole.y1, part.y2 - whole.y1), slice(part.x1 - whole.x1, part.x2 - whole.x1)


def _mix(plane: np.ndarray, target: np.ndarray, weight: np.ndarray) -> None:
    touched = weight > 0
    if not touched.any():
        return
    original = plane.astype(np.float32)
    mixed = np.clip(np.rint(original + (target - original) * weight), 0, 255).astype(np.uint8)
    plane[touched] = mixed[touched]


class YuvDetector:
    """A `FaceDetector` on `YuvFrame`s: Haar gets the luma plane (it works on grey anyway), S3FD and
    YuNet a BGR copy made from downscaled planes (they downscale to `max_side` anyway), any other
    detector a full BGR conversion (test doubles)."""

    VERSION = "yuv420p-v1"  # bump when what the wrapped detector is shown changes: cached detections miss

    def __init__(self, inner: FaceDetector) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def fingerprint(self) -> str:
        from daemon.render.faces import detector_fingerprint

        return f"{detector_fingerprint(self.inner)} frames={self.VERSION}"

    def detect(self, frame: YuvFrame) -> list[Box]:
        scaled: Callable[..., list[Box]] | None = getattr(self.inner, "detect_scaled", None)
        if scaled is not None:
            small, scale = frame.small_bgr(getattr(self.inner, "max_side", None))
            return scaled(small, scale, frame.shape)
        if getattr(self.inner, "takes_grey", False):
            grey: list[Box] = self.inner.detect(frame.luma)
            return grey
        found: list[Box] = self.inner.detect(frame.to_bgr())
        return found

    def detect_near(self, frame: YuvFrame, last: Box) -> list[Box]:
        """The wrapped detector's local search on luma where it has one; empty (= "ask `detect`") else."""
        near: Any = getattr(self.inner, "detect_near", None)
        if near is None or not getattr(self.inner, "takes_grey", False):
            return []
        found: list[Box] = near(frame.luma, last)
        return found
