"""media.py against real files written with PyAV: probing, decoding, audio loading, encoding, errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from daemon import samples
from daemon.render import media
from daemon.render.audio import SAMPLE_RATE

pytest.importorskip("skimage")

HAAR = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]


def stream_seconds(stream: av.stream.Stream) -> float:
    assert stream.duration is not None
    assert stream.time_base is not None
    return float(stream.duration * stream.time_base)


def faces(frame: np.ndarray) -> int:
    return len(HAAR.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 1.1, 5))


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def clip(media_dir: Path) -> Path:
    return samples.write_face_clip(media_dir / "clip.mp4", 2.0, 25, (256, 192))


@pytest.fixture(scope="module")
def upright() -> list[np.ndarray]:
    """The frames write_face_clip encodes for (256, 192), before compression."""
    return list(samples.face_frames(2.0, 25, (256, 192)))


# ---------------------------------------------------------------- probe and decode


def test_probe_constant_rate_clip(clip: Path) -> None:
    info = media.probe_video(clip)
    assert (info.width, info.height, info.fps, info.rotation, info.is_still) == (256, 192, 25.0, 0, False)
    assert info.duration == pytest.approx(2.0, abs=0.04)


def test_frames_are_bgr_upright_and_one_per_source_frame(clip: Path, upright: list[np.ndarray]) -> None:
    frames = list(media.iter_frames(clip, media.probe_video(clip)))
    assert len(frames) == 50
    assert frames[0].shape == (192, 256, 3)
    assert frames[0].dtype == np.uint8
    assert all(mean_abs(got, want) < 6 for got, want in zip(frames, upright, strict=True))


def test_ntsc_rate_is_kept(media_dir: Path) -> None:
    path = samples.write_face_clip(media_dir / "ntsc.mp4", 1.0, 30000 / 1001, (64, 64))
    info = media.probe_video(path)
    assert info.fps == pytest.approx(29.97, abs=0.01)
    assert len(list(media.iter_frames(path, info))) == 30


@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_rotation_metadata_is_honoured(media_dir: Path, rotate: int, upright: list[np.ndarray]) -> None:
    path = samples.write_face_clip(media_dir / f"rot{rotate}.mp4", 2.0, 25, (256, 192), rotate=rotate)
    with av.open(str(path)) as container:  # the pixels really are stored sideways
        stored = container.streams.video[0]
        turned = rotate % 180 == 90
        assert (stored.width, stored.height) == ((192, 256) if turned else (256, 192))
    info = media.probe_video(path)
    assert (info.width, info.height, info.rotation) == (256, 192, rotate)
    frames = list(media.iter_frames(path, info))
    assert frames[0].shape == (192, 256, 3)
    assert all(mean_abs(got, want) < 6 for got, want in zip(frames, upright, strict=True))
    assert sum(faces(f) > 0 for f in frames[::5]) >= 9  # the frontal cascade only finds upright faces


def write_numbered_vfr(path: Path, times_ms: list[int], end_ms: int) -> None:
    """Frame k is flat grey 20 + 5k at times_ms[k] (1 ms time base): the decoder's choice is visible."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "0", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, (start, end) in enumerate(zip(times_ms, [*times_ms[1:], end_ms], strict=True)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 + 5 * k, np.uint8), format="bgr24")
            frame.pts = start
            for packet in stream.encode(frame):
                packet.duration = end - start
                out.mux(packet)
        for packet in stream.encode(None):
            packet.duration = end_ms - times_ms[-1]
            out.mux(packet)


def test_variable_rate_is_resampled_to_nearest_frames(tmp_path: Path) -> None:
    times = [0, 10, 20, 100, 130, 300, 310, 320, 330, 340, 500, 520]  # bursts and gaps
    path = tmp_path / "numbered.mp4"
    write_numbered_vfr(path, times, 600)
    info = media.probe_video(path)
    info = dataclasses.replace(info, fps=25.0)  # sample at exactly 40 ms
    frames = list(media.iter_frames(path, info))
    assert len(frames) == 15  # 600 ms at 25 fps
    shown = [round((int(f[32, 32, 1]) - 20) / 5) for f in frames]
    nearest = [min(range(len(times)), key=lambda k: (abs(times[k] - 40 * n), -times[k])) for n in range(15)]
    assert shown == nearest


def test_variable_rate_clip_count_matches_duration(media_dir: Path) -> None:
    path = samples.write_vfr_clip(media_dir / "vfr.mp4", 3.0, mean_fps=25)
    with av.open(str(path)) as container:
        pts = [p.pts for p in container.demux(video=0) if p.pts is not None]
    gaps = np.diff(sorted(pts))
    assert gaps.max() > 1.5 * gaps.min()  # really irregular
    info = media.probe_video(path)
    frames = sum(1 for _ in media.iter_frames(path, info))
    assert abs(frames - info.duration * info.fps) <= 1
    assert info.duration == pytest.approx(3.0, abs=0.05)


def test_ten_bit_source_decodes_to_eight_bit(media_dir: Path, upright: list[np.ndarray]) -> None:
    path = samples.write_face_clip(media_dir / "ten.mp4", 2.0, 25, (256, 192), pix_fmt="yuv420p10le")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    frames = list(media.iter_frames(path, media.probe_video(path)))
    assert frames[0].dtype == np.uint8
    assert mean_abs(frames[10], upright[10]) < 6


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_still_image(tmp_path: Path, suffix: str) -> None:
    path = samples.write_still(tmp_path / f"face{suffix}", (200, 240))
    info = media.probe_video(path)
    assert (info.width, info.height, info.fps, info.is_still) == (200, 240, 25.0, True)
    frames = list(media.iter_frames(path, info))
    assert len(frames) == 1
    assert frames[0].shape == (240, 200, 3)
    assert faces(frames[0]) == 1


# ---------------------------------------------------------------- audio


AUDIO_CASES = [  # (suffix, channels, rate)
    *[(".wav", 1, 16000), (".wav", 2, 44100), (".wav", 6, 48000)],
    *[(".mp3", 1, 16000), (".mp3", 2, 44100)],
    *[(".m4a", 1, 16000), (".m4a", 2, 44100), (".m4a", 6, 48000)],
    *[(".ogg", 2, 22050)],
    *[(".opus", 1, 16000), (".opus", 2, 48000), (".opus", 6, 48000)],
    *[(".flac", 1, 16000), (".flac", 6, 32000)],
]


@pytest.mark.parametrize(("suffix", "channels", "rate"), AUDIO_CASES)
def test_load_audio_formats(tmp_path: Path, suffix: str, channels: int, rate: int) -> None:
    voice = samples.speech_like(2.0, seed=4, sr=rate)
    path = samples.write_audio(tmp_path / f"voice{suffix}", voice, rate, channels=channels)
    wav = media.load_audio(path)
    assert wav.dtype == np.float32
    assert wav.ndim == 1
    assert abs(len(wav) - 2 * SAMPLE_RATE) <= 0.07 * SAMPLE_RATE  # codec padding, at most ~one AAC frame
    assert np.sqrt(np.mean(wav**2)) > 0.02
    if rate == SAMPLE_RATE and suffix in (".wav", ".flac"):
        gain = {1: 1.0, 2: 0.8, 6: None}[channels]
        if gain:
            np.testing.assert_allclose(wav[: len(voice)], gain * voice, atol=2e-3)


def test_silence_is_valid_audio(tmp_path: Path) -> None:
    path = samples.write_audio(tmp_path / "quiet.wav", np.zeros(8000, np.float32))
    wav = media.load_audio(path)
    assert len(wav) == 8000
    assert not wav.any()


# ---------------------------------------------------------------- encoding


def encode(out: Path, frames: list[np.ndarray], fps: float, audio: Path | None) -> Path:
    height, width = frames[0].shape[:2]
    with media.VideoEncoder(out, width, height, fps, audio) as encoder:
        for frame in frames:
            encoder.write(frame)
    return out


def test_encoder_writes_h264_aac_faststart_matching_durations(
    tmp_path: Path, upright: list[np.ndarray]
) -> None:
    voice = samples.write_audio(tmp_path / "voice.wav", samples.speech_like(2.0, sr=44100), 44100, channels=6)
    out = encode(tmp_path / "out.mp4", upright, 25, voice)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "voice.wav"]  # no temp file left
    with av.open(str(out)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (sound.codec_context.name, sound.rate, sound.channels) == ("aac", 44100, 2)
        assert video.frames == 50
        video_s = stream_seconds(video)
        audio_s = stream_seconds(sound)
    assert abs(video_s - 2.0) < 1e-6
    assert abs(audio_s - video_s) < 1 / 25
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: a link can start playing at once
    frames = list(media.iter_frames(out, media.probe_video(out)))
    assert len(frames) == 50
    assert mean_abs(frames[20], upright[20]) < 4
    assert abs(len(media.load_audio(out)) - 2 * SAMPLE_RATE) < SAMPLE_RATE / 25 + 1024


def test_short_audio_is_padded_and_long_audio_cut(tmp_path: Path, upright: list[np.ndarray]) -> None:
    for seconds in (0.5, 5.0):
        voice = samples.write_audio(tmp_path / f"v{seconds}.m4a", samples.speech_like(seconds))
        out = encode(tmp_path / f"out{seconds}.mp4", upright[:25], 25, voice)
        with av.open(str(out)) as container:
            sound = container.streams.audio[0]
            assert (sound.rate, sound.channels) == (16000, 1)
            assert stream_seconds(sound) == pytest.approx(1.0, abs=1 / 25)


def test_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    frames = list(samples.face_frames(0.4, 25, (255, 257)))
    out = encode(tmp_path / "odd.mp4", frames, 25, None)
    info = media.probe_video(out)
    assert (info.width, info.height) == (256, 258)
    decoded = list(media.iter_frames(out, info))
    assert len(decoded) == 10
    assert mean_abs(decoded[3][:257, :255], frames[3]) < 6
    assert mean_abs(decoded[3][:, 255], decoded[3][:, 254]) < 6  # the padding repeats the edge


def test_encoder_leaves_nothing_behind_on_failure(tmp_path: Path, upright: list[np.ndarray]) -> None:
    out = tmp_path / "out.mp4"
    # the body fails part-way through, on purpose: the encoder must then clean up
    with pytest.raises(RuntimeError), media.VideoEncoder(out, 256, 192, 25, None) as encoder:  # noqa: PT012
        for frame in upright:
            encoder.write(frame)
        assert (tmp_path / ".out.part.mp4").exists()
        assert not out.exists()
        raise RuntimeError("render failed")
    assert list(tmp_path.iterdir()) == []


def test_encoder_rejects_wrong_frames_and_empty_output(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="expected"),
        media.VideoEncoder(tmp_path / "a.mp4", 64, 64, 25, None) as enc,
    ):
        enc.write(np.zeros((64, 63, 3), np.uint8))
    with (
        pytest.raises(ValueError, match="no frames"),
        media.VideoEncoder(tmp_path / "b.mp4", 64, 64, 25, None),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_encoder_audio_without_sound_fails_cleanly(tmp_path: Path, clip: Path) -> None:
    with pytest.raises(media.MediaError, match="no audio track"):
        media.VideoEncoder(tmp_path / "out.mp4", 64, 64, 25, clip)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- errors users see


@pytest.fixture(scope="module")
def broken(media_dir: Path, clip: Path) -> dict[str, Path]:
    folder = media_dir / "broken"
    folder.mkdir()
    faststart = encode(folder / "faststart.mp4", list(samples.face_frames(1.0, 25, (64, 64))), 25, None)
    files = {
        "zero": b"",
        "text": b"this is a shopping list, not a video\n" * 30,
        "truncated": clip.read_bytes()[: clip.stat().st_size // 2],  # moov at the end: lost
        "truncated_faststart": faststart.read_bytes()[: faststart.stat().st_size // 2],  # frames lost
    }
    paths = {name: folder / f"{name}.mp4" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    paths["voice"] = samples.write_audio(folder / "voice.m4a", samples.speech_like(1.0))
    paths["silent_video"] = clip
    return paths


@pytest.mark.parametrize(
    ("name", "load", "words"),
    [
        ("zero", media.probe_video, "is empty (0 bytes)"),
        ("zero", media.load_audio, "is empty (0 bytes)"),
        ("text", media.probe_video, "is not a video we can read"),
        ("text", media.load_audio, "is not a sound file we can read"),
        ("truncated", media.probe_video, "is not a video we can read"),
        ("truncated_faststart", media.probe_video, "is cut short"),
        ("voice", media.probe_video, "has no video track (it looks like an audio file)"),
        ("silent_video", media.load_audio, "has no audio track"),
    ],
)
def test_media_errors_name_the_file_in_plain_words(
    broken: dict[str, Path], name: str, load: Callable[[Path], object], words: str
) -> None:
    path = broken[name]
    with pytest.raises(media.MediaError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message
    assert words in message
    assert "Errno" not in message
    assert "avformat" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(media.MediaError, match="does not exist"):
        media.probe_video(tmp_path / "nope.mp4")


def test_encoder_availability_is_checked_not_assumed() -> None:
    assert media.encoder_available("libx264") is True
    assert media.encoder_available("no_such_codec") is False
    assert isinstance(media.encoder_available("h264_nvenc"), bool)  # False here; True only with NVENC


def test_unopenable_codec_fails_cleanly(tmp_path: Path, upright: list[np.ndarray]) -> None:
    """h264_nvenc cannot open without an NVENC GPU (none here, none on an H100): the failure is clean."""
    if media.encoder_available("h264_nvenc"):
        pytest.skip("this machine can encode with NVENC")
    with (
        pytest.raises(av.FFmpegError),
        media.VideoEncoder(tmp_path / "o.mp4", 256, 192, 25, None, codec="h264_nvenc") as enc,
    ):
        enc.write(upright[0])
    with pytest.raises(ValueError, match="not a video codec"):
        media.VideoEncoder(tmp_path / "o.mp4", 256, 192, 25, None, codec="aac")
    assert list(tmp_path.iterdir()) == []
