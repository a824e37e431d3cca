"""Audio features for the lip-sync model: the Wav2Lip mel spectrogram and its per-frame windows.

Pure numpy (scipy only for the pre-emphasis filter), matching the Wav2Lip reference that uses librosa
(the Wav2Lip reference). The input is 16 kHz mono float32 as `media.load_audio` returns it.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16000
MEL_STEP = 16  # columns per model input window
MEL_FPS = 80  # mel columns per second (SAMPLE_RATE / HOP)

N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS = 4.0
SILENCE = -MAX_ABS  # the normalised value of digital silence

_CHUNK_FRAMES = 4096  # STFT frames per block: bounds memory for long audio (~26 MB per block)


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """The normalised (80, T) float32 mel spectrogram of 16 kHz mono audio, T = 1 + len // 200."""
    y = _preemphasis(np.asarray(wav, dtype=np.float64))
    mel = mel_filterbank() @ _stft_magnitude(y)
    db = 20.0 * np.log10(np.maximum(10.0 ** (MIN_LEVEL_DB / 20.0), mel)) - REF_LEVEL_DB
    norm = 2.0 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS
    out: np.ndarray = np.clip(norm, -MAX_ABS, MAX_ABS).astype(np.float32)
    return out


def _preemphasis(x: np.ndarray) -> np.ndarray:
    """y[n] = x[n] - 0.97 x[n-1] (what the reference's scipy lfilter computes; scipy costs 2 s to import)."""
    y = x.copy()
    y[1:] -= PREEMPHASIS * x[:-1]
    return y


def _stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|STFT| (1 + N_FFT/2, T), centred with reflect padding like librosa.stft(pad_mode='reflect')."""
    pad = N_FFT // 2
    padded = np.pad(y, pad, mode="reflect") if len(y) > pad else _reflect_short(y, pad)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = _hann(WIN)
    blocks = [
        np.abs(np.fft.rfft(frames[i : i + _CHUNK_FRAMES] * window, axis=1))
        for i in range(0, len(frames), _CHUNK_FRAMES)
    ]
    return np.concatenate(blocks, axis=0).T


def _reflect_short(y: np.ndarray, pad: int) -> np.ndarray:
    """Reflect padding for signals shorter than the pad: numpy reflects repeatedly, as librosa does."""
    if len(y) < 2:
        return np.pad(y, pad, mode="constant")
    return np.pad(y, pad, mode="reflect")


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window('hann', n), which librosa uses)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def mel_filterbank(
    sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX
) -> np.ndarray:
    """Slaney-scale triangular filters with Slaney area norm, as librosa.filters.mel's defaults."""
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    spacing = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / spacing[:-1, None]
    upper = ramps[2:] / spacing[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    filters: np.ndarray = weights * (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    return filters


_F_SP = 200.0 / 3  # Slaney: linear below 1 kHz ...
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0  # ... logarithmic above


def _hz_to_mel(hz: float) -> float:
    if hz < _MIN_LOG_HZ:
        return hz / _F_SP
    return _MIN_LOG_MEL + math.log(hz / _MIN_LOG_HZ) / _LOGSTEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    linear = mels * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL))
    return np.where(mels >= _MIN_LOG_MEL, log, linear)


def mel_window(mel: np.ndarray, frame_index: int, fps: float) -> np.ndarray:
    """The (80, 16) mel window for video frame `frame_index` at `fps` (Wav2Lip's indexing).

    Columns [int(80 * i / fps), +16); the last 16 columns when that runs past the end; a mel shorter
    than 16 columns is padded on the right with silence.
    """
    if mel.shape[1] < MEL_STEP:
        pad = MEL_STEP - mel.shape[1]
        return np.pad(mel, ((0, 0), (0, pad)), constant_values=SILENCE).astype(np.float32)
    start = min(int(MEL_FPS * frame_index / fps), mel.shape[1] - MEL_STEP)
    return np.ascontiguousarray(mel[:, start : start + MEL_STEP])


def frame_count(audio_samples: int, fps: float) -> int:
    """Output video frames for `audio_samples` of 16 kHz audio: round(seconds * fps), at least 1."""
    return max(1, math.floor(audio_samples / SAMPLE_RATE * fps + 0.5))
