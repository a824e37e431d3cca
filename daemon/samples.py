"""Generated media for tests, the demo and the benchmark: no downloads.

Faces come from `skimage.data.astronaut()` (a public-domain NASA photo that ships in the scikit-image
wheel); scikit-image is a test/bench extra, so it is imported inside the functions that need it.
Voices are synthetic (`speech_like`) or spoken by espeak-ng (`write_demo`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from scipy.signal import lfilter

FACE_CENTRE = (224.0, 120.0)  # (x, y) of the astronaut's face in the 512x512 photo
DEMO_TEXT = "Welcome to the spring promotion. This video was made for you."

# suffix -> (container format, codec, encoder options)
AUDIO_FORMATS: dict[str, tuple[str, str, dict[str, str]]] = {
    ".wav": ("wav", "pcm_s16le", {}),
    ".mp3": ("mp3", "libmp3lame", {}),
    ".m4a": ("ipod", "aac", {}),
    ".ogg": ("ogg", "vorbis", {"strict": "experimental"}),  # the wheels ship FFmpeg's own vorbis only
    ".opus": ("ogg", "libopus", {}),
    ".flac": ("flac", "flac", {}),
}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
_MAX_CHANNELS = {"libmp3lame": 2}
_ONLY_CHANNELS = {"vorbis": 2}  # FFmpeg's own vorbis encoder writes stereo only
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def astronaut_bgr() -> np.ndarray:
    """The 512x512 astronaut photo as BGR uint8."""
    from skimage import data  # test/bench extra

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def face_frames(seconds: float, fps: float, size: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    """Upright (height, width) BGR frames of the face, gently zooming and panning over time."""
    photo = astronaut_bgr()
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    for i in range(max(1, round(seconds * fps))):
        yield _camera(photo, i / fps, phase, size)


def _camera(photo: np.ndarray, t: float, phase: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One view of the photo: a window of ~300 px around the face, breathing in and out, drifting."""
    width, height = size
    view = 300.0 * (1.0 + 0.08 * np.sin(2 * np.pi * 0.25 * t + phase[0]))
    cx = FACE_CENTRE[0] + 12.0 * np.sin(2 * np.pi * 0.17 * t + phase[1])
    cy = FACE_CENTRE[1] + 8.0 * np.sin(2 * np.pi * 0.21 * t + phase[2])
    scale = min(width, height) / view
    matrix = np.array([[scale, 0, width / 2 - scale * cx], [0, scale, height / 2 - scale * cy]])
    return cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def write_face_clip(
    path: Path,
    seconds: float,
    fps: float = 25,
    size: tuple[int, int] = (256, 256),
    *,
    rotate: int = 0,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    seed: int = 0,
) -> Path:
    """A talking-head-like clip of the astronaut, `size` = (width, height) as displayed.

    `rotate` (0, 90, 180, 270) is the phone convention: the player turns the stored picture clockwise
    by that much. The pixels are stored turned the other way, so a decoder honouring the display
    matrix shows the face upright.
    """
    if rotate % 90:
        raise ValueError(f"rotate must be a multiple of 90, not {rotate}")
    turns = (rotate // 90) % 4
    stored = size if turns % 2 == 0 else (size[1], size[0])
    with av.open(str(path), "w") as out:
        stream = _video_stream(out, codec, Fraction(fps).limit_denominator(1001), stored, pix_fmt)
        if turns:
            stream.set_display_rotation(-rotate)  # PyAV's degrees are counter-clockwise
        for i, frame in enumerate(face_frames(seconds, fps, size, seed)):
            _encode(out, stream, np.rot90(frame, turns), i)
        _encode(out, stream, None, 0)
    return path


def write_vfr_clip(
    path: Path,
    seconds: float,
    mean_fps: float = 25.0,
    size: tuple[int, int] = (256, 256),
    *,
    seed: int = 0,
) -> Path:
    """A variable frame rate clip: frame gaps drawn from 0.4x to 1.6x the mean, in a 1 ms time base.

    The last frame is shown until exactly `seconds` (its duration is set), like a phone recording.
    """
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(0.4, 1.6, int(seconds * mean_fps * 2)) / mean_fps
    starts = np.concatenate([[0.0], np.cumsum(gaps)])
    millis = np.round(1000 * np.append(starts[starts < seconds - 0.01], seconds)).astype(int)
    photo = astronaut_bgr()
    phase = rng.uniform(0, 2 * np.pi, 3)
    with av.open(str(path), "w") as out:
        stream = _video_stream(out, "libx264", Fraction(round(mean_fps)), size, "yuv420p")
        stream.codec_context.time_base = Fraction(1, 1000)
        durations = {int(start): int(end - start) for start, end in itertools.pairwise(millis)}
        for start in durations:
            _encode(out, stream, _camera(photo, start / 1000, phase, size), start, durations)
        _encode(out, stream, None, 0, durations)
    return path


def _video_stream(
    out: av.container.OutputContainer, codec: str, rate: Fraction, size: tuple[int, int], pix_fmt: str
) -> av.video.stream.VideoStream:
    stream = out.add_stream(codec, rate=rate)
    if not isinstance(stream, av.video.stream.VideoStream):
        raise ValueError(f"{codec} is not a video codec")
    stream.width, stream.height = size
    stream.pix_fmt = pix_fmt
    return stream


def _encode(
    out: av.container.OutputContainer,
    stream: av.video.stream.VideoStream,
    img: np.ndarray | None,
    pts: int,
    durations: dict[int, int] | None = None,
) -> None:
    """Encode one BGR image (None flushes the encoder) and mux what comes out.

    `durations` (pts -> duration) sets packet durations: x264 does not carry them over from frames.
    """
    frame = None
    if img is not None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
        frame.pts = pts
    for packet in stream.encode(frame):
        if durations and packet.pts in durations:
            packet.duration = durations[packet.pts]
        out.mux(packet)


def speech_like(seconds: float, seed: int = 0, sr: int = 16000) -> np.ndarray:
    """Float32 mono "syllables": voiced bursts of 80-400 ms (f0 120-220 Hz, two formants) and pauses."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * sr), np.float32)
    pos = int(rng.uniform(0.05, 0.2) * sr)
    while pos < len(out):
        n = min(int(rng.uniform(0.08, 0.4) * sr), len(out) - pos)
        out[pos : pos + n] = _syllable(n, sr, rng)
        pos += n + int(rng.uniform(0.05, 0.25) * sr)
    return out


def _syllable(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    f0 = rng.uniform(120, 220) * np.linspace(1.0, rng.uniform(0.85, 1.15), n)  # a gentle glide
    phase = 2 * np.pi * np.cumsum(f0) / sr
    harmonics = np.sum([np.sin(k * phase) / k for k in range(1, 20)], axis=0)
    voiced = _resonate(_resonate(harmonics, rng.uniform(400, 900), sr), rng.uniform(1000, 2400), sr)
    envelope = np.abs(np.sin(np.pi * np.arange(n) / max(n - 1, 1))) ** 0.6
    wave: np.ndarray = (0.5 * envelope * voiced / (np.max(np.abs(voiced)) + 1e-9)).astype(np.float32)
    return wave


def _resonate(x: np.ndarray, freq: float, sr: int, bandwidth: float = 150.0) -> np.ndarray:
    """A two-pole resonator at `freq`: a crude formant."""
    r = np.exp(-np.pi * bandwidth / sr)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / sr), r * r]
    return np.asarray(lfilter([1.0 - r], a, x))


def write_audio(path: Path, samples: np.ndarray, sr: int = 16000, *, channels: int = 1) -> Path:
    """Write mono float samples to `path`; container and codec follow the suffix (AUDIO_FORMATS).

    With 2 or 6 channels each channel gets the voice at a different gain (LFE silent), so a downmix
    is still the same speech.
    """
    fmt, codec, options = AUDIO_FORMATS[path.suffix.lower()]
    _check_channels(codec, channels)
    layout = _LAYOUTS[channels]
    data = _spread(np.asarray(samples, np.float32), channels)
    if codec == "libopus" and sr not in _OPUS_RATES:
        raise ValueError(f"opus cannot store {sr} Hz; use one of {_OPUS_RATES}")
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout, options=options)
        if not isinstance(stream, av.audio.stream.AudioStream):
            raise ValueError(f"{codec} is not an audio codec")
        for start in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, start : start + 1024]), format="fltp", layout=layout
            )
            frame.rate, frame.pts = sr, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _check_channels(codec: str, channels: int) -> None:
    if channels not in _LAYOUTS:
        raise ValueError(f"channels must be one of {sorted(_LAYOUTS)}, not {channels}")
    if channels > _MAX_CHANNELS.get(codec, 8) or _ONLY_CHANNELS.get(codec, channels) != channels:
        raise ValueError(f"{codec} cannot write {channels} channels here")


def _spread(mono: np.ndarray, channels: int) -> np.ndarray:
    gains = {1: [1.0], 2: [0.9, 0.7], 6: [0.6, 0.5, 0.8, 0.0, 0.3, 0.3]}[channels]
    return np.stack([g * mono for g in gains]).astype(np.float32)


def write_still(path: Path, size: tuple[int, int] = (256, 256)) -> Path:
    """The astronaut's face as a PNG or JPEG (by suffix), `size` = (width, height)."""
    img = _camera(astronaut_bgr(), 0.0, np.zeros(3), size)
    if not cv2.imwrite(str(path), img):
        raise ValueError(f"cannot write an image to {path}: use a .png or .jpg name")
    return path


def write_demo(folder: Path, espeak: str = "espeak-ng") -> list[Path]:
    """Regenerate examples/demo: anchor.mp4 (4 s face clip) and speech.wav (espeak-ng, 16 kHz mono)."""
    from daemon.render.media import load_audio  # only the demo needs the decoder

    folder.mkdir(parents=True, exist_ok=True)
    anchor = write_face_clip(folder / "anchor.mp4", 4.0, 25, (256, 256), seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        exe = shutil.which(espeak) or espeak
        subprocess.run([exe, "-v", "en-us", "-s", "165", "-w", os.fspath(raw), DEMO_TEXT], check=True)
        speech = write_audio(folder / "speech.wav", load_audio(raw), 16000)
    return [anchor, speech]
