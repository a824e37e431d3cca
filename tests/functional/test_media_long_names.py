"""Output names near the 255-byte limit of one file name: the encoder's temp file must still fit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from daemon.render import media


def test_a_253_byte_output_name_encodes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / ("促" * 83 + ".mp4")  # 253 bytes: '.NAME.part.mp4' would be 259
    with media.VideoEncoder(out, 64, 64, 25, None) as encoder:
        assert len(os.fsencode(encoder._tmp.name)) <= 255
        assert encoder._tmp.name.startswith(".") and encoder._tmp.name.endswith(
            ".part.mp4"
        )  # what recovery removes
        for _ in range(5):
            encoder.write(np.zeros((64, 64, 3), np.uint8))
    assert os.listdir(tmp_path) == [out.name]
    assert media.probe_video(out).width == 64


def test_long_names_that_share_a_beginning_get_their_own_temp_files(tmp_path: Path) -> None:
    first, second = (tmp_path / ("a" * 240 + tail + ".mp4") for tail in ("x", "y"))
    assert media._temp_path(first) != media._temp_path(second)
    assert media._temp_path(tmp_path / "short.mp4").name == ".short.part.mp4"
