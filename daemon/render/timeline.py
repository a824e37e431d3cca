"""Map the avatar video onto the audio's length: cut a longer video, and stretch a shorter one by
ping-pong (0..M-1, M-2..1, ...), loop or freezing its last frame.

Replaying needs random access to frames already decoded. They go to a scratch file on disk, not into
memory, so a long avatar video costs disk space, never resident memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.render.types import FaceCrop
from daemon.render.yuv import YuvFrame

POLICIES = ("pingpong", "loop", "freeze")


@dataclass(frozen=True)
class TimelineFrame:
    index: int  # output frame index
    source_index: int  # which frame of the avatar video it shows
    frame: YuvFrame | np.ndarray  # the pipeline's planes; BGR uint8 where a caller streams BGR
    crop: FaceCrop


def source_index(out_index: int, frames: int, policy: str) -> int:
    """Which of `frames` avatar frames shows at output frame `out_index` once the video has run out."""
    if out_index < frames:
        return out_index
    if frames == 1 or policy == "freeze":
        return frames - 1
    if policy == "loop":
        return out_index % frames
    period = 2 * frames - 2  # ping-pong: forwards then backwards without repeating the end frames
    phase = out_index % period
    return phase if phase < frames else period - phase


class FrameSpill:
    """Frames of one fixed shape, appended to a scratch file and read back by index (pread)."""

    def __init__(self, scratch_dir: Path, like: YuvFrame | np.ndarray) -> None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        self.like = like  # frames read back are made in its image (planes keep their size and matrix)
        self.frame_bytes = like.nbytes
        self._fd, name = tempfile.mkstemp(prefix="spill.", suffix=".raw", dir=scratch_dir)
        os.unlink(name)  # the file lives as long as the descriptor: nothing to clean up after a crash
        self.crops: list[FaceCrop] = []

    def append(self, frame: YuvFrame | np.ndarray, crop: FaceCrop) -> None:
        data = frame.buffer if isinstance(frame, YuvFrame) else np.ascontiguousarray(frame)
        os.write(self._fd, data.tobytes())
        self.crops.append(crop)

    def read(self, index: int) -> YuvFrame | np.ndarray:
        data = os.pread(self._fd, self.frame_bytes, index * self.frame_bytes)
        pixels = np.frombuffer(data, dtype=np.uint8).copy()
        if isinstance(self.like, YuvFrame):
            return YuvFrame(pixels, self.like.width, self.like.height, self.like.matrix)
        return pixels.reshape(self.like.shape)

    def __len__(self) -> int:
        return len(self.crops)

    def close(self) -> None:
        os.close(self._fd)


def timeline(
    tracked: Iterable[tuple[YuvFrame | np.ndarray, FaceCrop]],
    total: int,
    *,
    policy: str,
    spill_dir: Path | None,
    keep_longer_video: bool = False,
) -> Iterator[TimelineFrame]:
    """Yield `total` output frames (more if `keep_longer_video` and the video is longer).

    `spill_dir` None means the caller knows the video is long enough; then a short video ends the output early
    rather than failing (the caller reports the frame count it got)."""
    spill: FrameSpill | None = None
    count = 0
    try:
        for frame, crop in tracked:
            if count >= total and not keep_longer_video:
                return
            if spill_dir is not None:
                spill = spill or FrameSpill(spill_dir, frame)
                spill.append(frame, crop)
            yield TimelineFrame(count, count, frame, crop)
            count += 1
        if spill is None or count == 0:
            return
        for out_index in range(count, total):
            src = source_index(out_index, count, policy)
            yield TimelineFrame(out_index, src, spill.read(src), _renumber(spill.crops[src], out_index))
    finally:
        if spill is not None:
            spill.close()


def _renumber(crop: FaceCrop, index: int) -> FaceCrop:
    return FaceCrop(index=index, box=crop.box)
