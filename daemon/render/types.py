"""Small frozen dataclasses the render stages exchange. No logic beyond trivial helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What the decoder learned about a video before decoding it."""

    width: int  # display width, after rotation
    height: int  # display height, after rotation
    fps: float  # the constant output frame rate the decoder resamples to
    duration: float  # seconds (best estimate from the container)
    rotation: int  # degrees the decoder rotates frames by (0, 90, 180, 270)
    is_still: bool = False  # a single image (PNG/JPEG) used as an avatar


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates, x1/y1 inclusive, x2/y2 exclusive.

    `landmarks`: from detectors that find them (YuNet), five points as 10 ints in frame pixels, in
    YuNet's order: right eye, left eye, nose tip, right mouth corner, left mouth corner (x, y each;
    "right" is the person's, on the image's left). None for box-only detectors (Haar, S3FD)."""

    x1: int
    y1: int
    x2: int
    y2: int
    landmarks: tuple[int, ...] | None = None

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    def point(self, which: int) -> tuple[int, int] | None:
        """Landmark `which` (see LANDMARKS) as (x, y), or None when the detector gave none."""
        if self.landmarks is None:
            return None
        return self.landmarks[2 * which], self.landmarks[2 * which + 1]


LANDMARKS = ("right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth")  # Box.landmarks' order
RIGHT_EYE, LEFT_EYE, NOSE_TIP, RIGHT_MOUTH, LEFT_MOUTH = range(5)


class FaceDetector(Protocol):
    """Finds faces in one BGR uint8 frame. Implementations: Haar (built in), S3FD, YuNet (imported)."""

    name: str

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        """All faces found, largest-confidence first; empty when none."""
        ...


@dataclass(frozen=True)
class FaceCrop:
    """The smoothed, padded box for one frame, or None when no face was found in that frame."""

    index: int  # frame index in the output timeline
    box: Box | None
