"""Edges of media.py found by the hostile-inputs suite and its fuzzing bench: output names near the 255-byte
file name limit, pictures larger than 8K, AAC padding at low rates, tags that are not UTF-8."""

from __future__ import annotations

import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from daemon import samples
from daemon.render import media


def test_a_253_byte_output_name_encodes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / ("促" * 83 + ".mp4")  # 253 bytes: '.NAME.part.mp4' would be 259
    with media.VideoEncoder(out, 64, 64, 25, None) as encoder:
        assert len(os.fsencode(encoder._tmp.name)) <= 255
        assert encoder._tmp.name.startswith(".")
        assert encoder._tmp.name.endswith(".part.mp4")
        for _ in range(5):
            encoder.write(np.zeros((64, 64, 3), np.uint8))
    assert os.listdir(tmp_path) == [out.name]
    assert media.probe_video(out).width == 64


def test_long_names_that_share_a_beginning_get_their_own_temp_files(tmp_path: Path) -> None:
    first, second = (tmp_path / ("a" * 240 + tail + ".mp4") for tail in ("x", "y"))
    assert media._temp_path(first) != media._temp_path(second)
    assert media._temp_path(tmp_path / "short.mp4").name == ".short.part.mp4"


def test_a_picture_larger_than_8k_is_refused_in_plain_words(tmp_path: Path) -> None:
    """A 9000x600 PNG: decodable, but past the limit (a real 9000x9000 works the same, only slower)."""
    path = tmp_path / "poster.png"
    cv2.imwrite(str(path), np.zeros((600, 9000, 3), np.uint8))
    with pytest.raises(media.MediaError, match=r"poster.png is 9000x600 pixels; .* Scale it down"):
        media.probe_video(path)


def test_a_video_larger_than_8k_is_refused_before_decoding(tmp_path: Path) -> None:
    """The container says its size: no frame of it is decoded (a frame this size is 300 MB)."""
    path = tmp_path / "wide.mp4"
    with media.VideoEncoder(path, 8200, 64, 25, None) as encoder:
        encoder.write(np.zeros((64, 8200, 3), np.uint8))
    with pytest.raises(media.MediaError, match="8200x64 pixels"):
        media.probe_video(path)


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_m4a_sound_is_as_long_as_it_says_without_the_codec_padding(tmp_path: Path, rate: int) -> None:
    """AAC fills its last 1024-sample frame: at 8 kHz that was 0.12 s of silence added to the video."""
    path = samples.write_audio(tmp_path / "voice.m4a", samples.speech_like(0.9, sr=rate), rate)
    assert len(media.load_audio(path)) == pytest.approx(0.9 * 16000, abs=16)


def test_tags_that_are_not_utf8_do_not_make_a_file_unusable(tmp_path: Path) -> None:
    """An old camera's Latin-1 title: PyAV refused to open the file (UnicodeDecodeError)."""
    path = tmp_path / "camera.mp4"
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "QQQQQQQQ"
        stream = out.add_stream("libx264", rate=25)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    path.write_bytes(path.read_bytes().replace(b"QQQQQQQQ", b"Caf\xe9 \xad\xadQ"))
    assert media.probe_video(path).width == 64


def test_a_video_in_a_codec_ffmpeg_does_not_know_fails_in_plain_words(tmp_path: Path) -> None:
    """A damaged sample description (found by fuzzing): the stream has no decoder, so no codec context."""
    path = samples.write_face_clip(tmp_path / "odd-codec.mp4", 0.2, 25, (64, 64))
    data = path.read_bytes()
    at = data.index(b"avc1", data.index(b"stsd"))
    path.write_bytes(data[:at] + b"zzzz" + data[at + 4 :])
    with pytest.raises(media.MediaError, match=r"odd-codec.mp4 is not a video we can read"):
        media.probe_video(path)
