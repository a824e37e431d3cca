"""Length policies: ping-pong, loop, freeze, cut; replayed frames come back from disk unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from daemon.render.timeline import source_index, timeline
from daemon.render.types import Box, FaceCrop


def test_pingpong_does_not_repeat_end_frames() -> None:
    assert [source_index(i, 4, "pingpong") for i in range(12)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert [source_index(i, 3, "loop") for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [source_index(i, 3, "freeze") for i in range(5)] == [0, 1, 2, 2, 2]
    assert [source_index(i, 1, "pingpong") for i in range(3)] == [0, 0, 0]


def frames(n: int) -> list[tuple[np.ndarray, FaceCrop]]:
    return [
        (np.full((4, 6, 3), i, np.uint8), FaceCrop(i, Box(i, 0, i + 1, 1) if i % 2 else None))
        for i in range(n)
    ]


def test_short_video_is_stretched_from_the_spill(tmp_path: Path) -> None:
    out = list(timeline(frames(3), 7, policy="pingpong", spill_dir=tmp_path))
    assert [f.source_index for f in out] == [0, 1, 2, 1, 0, 1, 2]
    assert [int(cast(np.ndarray, f.frame)[0, 0, 0]) for f in out] == [0, 1, 2, 1, 0, 1, 2]
    assert [f.index for f in out] == list(range(7))
    assert out[3].crop == FaceCrop(3, Box(1, 0, 2, 1))
    assert out[4].crop.box is None
    assert list(tmp_path.iterdir()) == []  # the spill file is unlinked from the start


def test_long_video_is_cut_or_kept(tmp_path: Path) -> None:
    assert len(list(timeline(frames(10), 4, policy="pingpong", spill_dir=None))) == 4
    assert len(list(timeline(frames(10), 4, policy="pingpong", spill_dir=None, keep_longer_video=True))) == 10
