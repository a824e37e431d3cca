"""Audio features for MuseTalk: Whisper's log-mel, 30 s segments, and the per-frame encoder windows.

Numpy only (the daemon never imports torch or transformers). The log-mel equals transformers'
`WhisperFeatureExtractor` (whisper-tiny's preprocessor: 80 bands, n_fft 400, hop 160, 30 s chunks).
The audio encoder is a callable supplied by the caller (the ONNX Whisper encoder), so this module
stays free of any runtime.

Use:
    features = encode_audio(wav16k, encode)         # once per job: runs the encoder on every segment
    window = features.window(frame_index, fps)      # (50, 384) for any video of that job
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.render.audio import mel_filterbank

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
SEGMENT_SECONDS = 30
SEGMENT_SAMPLES = SEGMENT_SECONDS * SAMPLE_RATE  # 480,000: each segment is zero-padded to this
SEGMENT_FRAMES = SEGMENT_SAMPLES // HOP  # 3000 mel columns per segment
ENCODER_STEPS = SEGMENT_FRAMES // 2  # 1500: the encoder's stride-2 convolution halves the columns
STEPS_PER_SECOND = ENCODER_STEPS // SEGMENT_SECONDS  # 50 Hz
WINDOW_STEPS = 10  # encoder steps per video frame (2 x (2 left + 2 right + 1))
PAD_LEFT = 2  # zero steps on the left: PAD_LEFT x m, m = ceil(50 / fps)
# The reference also pads 6m zero steps on the right; windows read zeros past the end anyway.

LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below each segment's maximum
_EPS = 1e-9  # slack in floor(i x 50 / fps) so exact step boundaries survive float rounding

Encoder = Callable[[np.ndarray], np.ndarray]
"""(B, 80, 3000) float32 log-mel -> (B, 1500, layers, width) stacked hidden states (tiny: 5 x 384)."""


def log_mel(segment: np.ndarray) -> np.ndarray:
    """Whisper's (80, 3000) float32 log-mel of up to 30 s of 16 kHz mono audio (zero-padded to 30 s)."""
    mel: np.ndarray = log_mel_batch(np.asarray(segment)[None])[0]
    return mel


def log_mel_batch(segments: np.ndarray) -> np.ndarray:
    """(B, n <= 480,000) samples -> (B, 80, 3000) float32; each segment is normalised on its own maximum."""
    wav = np.asarray(segments, dtype=np.float32)  # transformers casts to float32 first
    if wav.ndim != 2 or wav.shape[1] > SEGMENT_SAMPLES:
        raise ValueError(f"expected (B, n <= {SEGMENT_SAMPLES}) samples, got shape {wav.shape}")
    padded = np.zeros((wav.shape[0], SEGMENT_SAMPLES), np.float64)
    padded[:, : wav.shape[1]] = wav
    power = _stft_power(padded)  # (B, 3001, 201)
    mel = np.matmul(power[:, :-1], _mel_filters().T)  # last frame dropped -> (B, 3000, 80)
    logs = np.log10(np.maximum(mel, LOG_FLOOR))
    peaks = logs.max(axis=(1, 2), keepdims=True)
    logs = (np.maximum(logs, peaks - DYNAMIC_RANGE) + 4.0) / 4.0
    return np.ascontiguousarray(logs.transpose(0, 2, 1), dtype=np.float32)


def _stft_power(wav: np.ndarray) -> np.ndarray:
    """|STFT|^2 (B, frames, 201): centred, reflect-padded, periodic Hann (torch.stft's defaults)."""
    pad = N_FFT // 2
    framed = np.pad(wav, ((0, 0), (pad, pad)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(framed, N_FFT, axis=1)[:, ::HOP]
    spectrum = np.fft.rfft(frames * _hann(), axis=2)
    return spectrum.real**2 + spectrum.imag**2


@functools.cache
def _hann() -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)


@functools.cache
def _mel_filters() -> np.ndarray:
    """(80, 201) Slaney-scale filters, 0-8000 Hz, Slaney norm (transformers' mel_filter_bank, slaney)."""
    return mel_filterbank(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=SAMPLE_RATE / 2)


def segment_features(wav: np.ndarray) -> list[np.ndarray]:
    """16 kHz mono audio cut into 30 s segments -> one (80, 3000) log-mel each (the last zero-padded)."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    return [log_mel(wav[i : i + SEGMENT_SAMPLES]) for i in range(0, len(wav), SEGMENT_SAMPLES)]


class SpilledSteps:
    """The encoder's (T, layers, width) float32 steps in an unnamed file on disk, read a window at a time.

    They grow with the audio (115 MB for 5 minutes, 1.4 GB for an hour) and a render reads ten steps a
    frame, so they stay out of the process's memory: reads go through the page cache, which the kernel
    can drop. The file has no name (O_TMPFILE where the file system allows it, else removed at once), so
    nothing is left behind, even after a kill.
    """

    def __init__(self, shape: tuple[int, int, int], folder: Path | None = None) -> None:
        self.shape = shape
        self._row_bytes = shape[1] * shape[2] * 4
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        # held for the features' lifetime, closed (and the disk space freed) with them
        self._file = tempfile.TemporaryFile(prefix="whisper-steps.", dir=folder)  # noqa: SIM115
        self._file.truncate(shape[0] * self._row_bytes)  # sparse: steps never written read as zeros

    def write(self, first: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, np.float32).tobytes()
        os.pwrite(self._file.fileno(), data, first * self._row_bytes)

    def __getitem__(self, steps: slice) -> np.ndarray:
        lo, hi, _ = steps.indices(self.shape[0])
        count = max(0, hi - lo)
        data = os.pread(self._file.fileno(), count * self._row_bytes, lo * self._row_bytes)
        return np.frombuffer(data, np.float32).reshape(count, *self.shape[1:])


@dataclass(frozen=True)
class WhisperFeatures:
    """A job's encoded audio: `hidden` (T, layers, width), T = floor(seconds x 50), segments joined, in
    memory or spilled to disk. It does not depend on any video: `window(i, fps)` serves every frame
    rate from the same steps.
    """

    hidden: np.ndarray | SpilledSteps

    def window(self, frame_index: int, fps: float) -> np.ndarray:
        """The (10 x layers, width) window for video frame `frame_index` at `fps`.

        MuseTalk pads `hidden` with 2m zero steps on the left and 6m on the right (m = ceil(50 / fps))
        and frame i reads padded steps [floor(i x 50 / fps), +10), time-major: row = step x layers +
        layer. The reference truncates fps to an integer (29.97 -> 29), so at 29.97 fps its audio runs
        3.3% ahead of the video (2 s after a minute); we use the true rate. Steps past the padded end read as
        zero as well (the reference would stop there; our frame count rounds where it floors).
        """
        if frame_index < 0 or fps <= 0:
            raise ValueError(f"frame index {frame_index} and fps {fps} must be >= 0 and > 0")
        m = math.ceil(STEPS_PER_SECOND / fps - _EPS)
        start = math.floor(frame_index * STEPS_PER_SECOND / fps + _EPS) - PAD_LEFT * m
        steps, layers, width = self.hidden.shape
        out = np.zeros((WINDOW_STEPS, layers, width), np.float32)
        lo, hi = max(start, 0), min(start + WINDOW_STEPS, steps)
        if lo < hi:
            out[lo - start : hi - start] = self.hidden[lo:hi]
        return out.reshape(WINDOW_STEPS * layers, width)

    def windows(self, fps: float, first: int, count: int) -> np.ndarray:
        """Frames first .. first + count - 1 stacked: (count, 10 x layers, width), a UNet batch."""
        return np.stack([self.window(i, fps) for i in range(first, first + count)])


def encode_audio(
    wav: np.ndarray, encode: Encoder, batch: int = 1, *, spill_dir: Path | None = None, spill: bool = True
) -> WhisperFeatures:
    """Run `encode` over the 30 s segments of 16 kHz mono `wav`, `batch` segments per call, into one array.

    Only floor(seconds x 50) steps are kept: the rest is the last segment's zero padding. One segment a
    call by default: onnxruntime keeps the memory of the largest batch it ran, and four segments at once
    held about 1 GB more for 5 minutes of audio than one (and were no faster on a CPU). The result is
    written in place, so the segments are never held twice, and with `spill` (the default) to an unnamed
    file in `spill_dir` (a disk, not a tmpfs: see `SpilledSteps`), so a long voice-over costs no memory.
    """
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    keep = math.floor(len(wav) * STEPS_PER_SECOND / SAMPLE_RATE)
    starts = range(0, len(wav), SEGMENT_SAMPLES)
    joined: np.ndarray | SpilledSteps | None = None
    for i in range(0, len(starts), batch):
        chunk = [wav[s : s + SEGMENT_SAMPLES] for s in starts[i : i + batch]]
        hidden = _checked(encode(np.stack([log_mel(c) for c in chunk])), len(chunk))
        if joined is None:
            shape = (keep, hidden.shape[2], hidden.shape[3])
            joined = SpilledSteps(shape, spill_dir) if spill else np.zeros(shape, np.float32)
        first = i * ENCODER_STEPS
        rows = hidden.reshape(-1, *hidden.shape[2:])[: max(0, keep - first)]
        if isinstance(joined, SpilledSteps):
            joined.write(first, rows)
        else:
            joined[first : first + len(rows)] = rows
    if joined is None:
        return WhisperFeatures(np.zeros((0, 5, 384), np.float32))
    return WhisperFeatures(joined)


def _checked(hidden: np.ndarray, count: int) -> np.ndarray:
    """The encoder's output, after checking it is (count, 1500, layers, width)."""
    hidden = np.asarray(hidden)
    if hidden.ndim != 4 or hidden.shape[:2] != (count, ENCODER_STEPS):
        raise ValueError(
            f"the audio encoder returned shape {hidden.shape}, expected ({count}, {ENCODER_STEPS}, layers, "
            "width): it must return the stacked hidden states of every segment (all of them, one per layer)"
        )
    return hidden
