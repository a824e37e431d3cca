"""The benchmark's inputs, generated with daemon/samples.py and kept in a folder between runs.

Long clips are not rendered frame by frame (5 minutes of 1080p would take the generator ~15 minutes on
two cores): a 12 s clip is generated once and its packets are copied back to back with shifted
timestamps. The content jumps every 12 s, which the face tracker handles like a cut.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import av
import structlog

from daemon import samples

log = structlog.get_logger(__name__)

VERSION = 1  # part of every file name: bump when the generators change
SEGMENT_SECONDS = 12.0
FPS = 25


class Inputs:
    """Files in `folder`, made on first request; names say what they are."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def clip(self, size: tuple[int, int], seconds: float) -> Path:
        """A face clip of at least `seconds` (a whole number of 12 s segments when longer than one)."""
        if seconds <= SEGMENT_SECONDS:
            return self._made(
                f"face_{size[0]}x{size[1]}_{seconds:g}s", ".mp4", lambda p: _face(p, seconds, size)
            )
        copies = math.ceil(seconds / SEGMENT_SECONDS)
        segment = self.clip(size, SEGMENT_SECONDS)
        name = f"face_{size[0]}x{size[1]}_{copies * SEGMENT_SECONDS:g}s"
        return self._made(name, ".mp4", lambda p: concat_copies(segment, p, copies))

    def speech(self, seconds: float) -> Path:
        return self._made(f"speech_{seconds:g}s", ".wav", lambda p: _speech(p, seconds))

    def _made(self, stem: str, suffix: str, make: Callable[[Path], object]) -> Path:
        path = self.folder / f"{stem}.v{VERSION}{suffix}"
        if not path.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.tmp{suffix}")
            log.info("bench_input_generating", path=str(path))
            make(tmp)
            os.replace(tmp, path)
        return path


def _face(path: Path, seconds: float, size: tuple[int, int]) -> None:
    samples.write_face_clip(path, seconds, FPS, size, seed=3)


def _speech(path: Path, seconds: float) -> None:
    samples.write_audio(path, samples.speech_like(seconds, seed=1))


def concat_copies(source: Path, dest: Path, copies: int) -> Path:
    """`copies` copies of `source`'s video track back to back, without re-encoding."""
    span = _span(source)
    with av.open(os.fspath(source)) as inp, av.open(os.fspath(dest), "w", format="mp4") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for copy in range(copies):
            inp.seek(0)
            for packet in inp.demux(in_stream):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.pts = None if packet.pts is None else packet.pts + copy * span
                packet.dts += copy * span
                packet.stream = out_stream
                out.mux(packet)
    return dest


def _span(source: Path) -> int:
    """The clip's length in its stream's time base: from the first frame's start to the last's end."""
    with av.open(os.fspath(source)) as inp:
        stream = inp.streams.video[0]
        times = [(p.pts, p.duration or 0) for p in inp.demux(stream) if p.pts is not None]
    first = min(pts for pts, _ in times)
    return max(pts + duration for pts, duration in times) - first
