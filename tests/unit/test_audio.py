"""The mel spectrogram against the Wav2Lip reference (computed with librosa), and window indexing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from daemon.render import audio
from daemon.samples import speech_like

librosa = pytest.importorskip("librosa")


def wav2lip_reference(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.melspectrogram with its hparams (hparams.py), written out with librosa."""
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    spec = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, pad_mode="reflect")
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    mel = np.dot(basis, np.abs(spec))
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    norm: np.ndarray = np.clip((2 * 4) * ((db + 100) / 100) - 4, -4, 4)
    return norm


def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 2) / 16000
    return {
        "speech": speech_like(3.0, seed=3),
        "noise": (0.3 * rng.standard_normal(16000)).astype(np.float32),
        "chirp": (0.5 * scipy.signal.chirp(t, 50, t[-1], 7000)).astype(np.float32),
        "silence": np.zeros(16000, np.float32),
        "short": (0.2 * rng.standard_normal(2000)).astype(np.float32),  # 11 columns, < MEL_STEP
        "odd_length": (0.2 * rng.standard_normal(16123)).astype(np.float32),
    }


@pytest.mark.parametrize("name", list(signals()))
def test_mel_matches_wav2lip_reference(name: str) -> None:
    wav = signals()[name]
    ours = audio.mel_spectrogram(wav)
    ref = wav2lip_reference(wav)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (80, 1 + len(wav) // 200)
    assert np.max(np.abs(ours - ref)) < 1e-4


def test_mel_filterbank_matches_librosa() -> None:
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    assert np.max(np.abs(audio.mel_filterbank() - ref)) < 1e-7


def test_silence_is_the_floor() -> None:
    assert np.all(audio.mel_spectrogram(np.zeros(4000, np.float32)) == audio.SILENCE)


def test_one_second_is_80_columns() -> None:
    assert audio.mel_spectrogram(np.zeros(16000, np.float32)).shape[1] == 81  # centred: 1 + n // hop


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_window_indexing(fps: float) -> None:
    mel = np.arange(80 * 200, dtype=np.float32).reshape(80, 200)
    for i in (0, 1, 7, 50):
        start = int(80 * i / fps)
        np.testing.assert_array_equal(audio.mel_window(mel, i, fps), mel[:, start : start + 16])
    past_end = audio.mel_window(mel, 1000, fps)
    np.testing.assert_array_equal(past_end, mel[:, -16:])


def test_window_at_2997_uses_the_reference_rounding() -> None:
    mel = np.tile(np.arange(400, dtype=np.float32), (80, 1))
    fps = 30000 / 1001
    assert audio.mel_window(mel, 3, fps)[0, 0] == int(80 * 3 / fps) == 8
    assert audio.mel_window(mel, 140, fps)[0, 0] == int(80 * 140 / fps) == 373
    assert audio.mel_window(mel, 150, fps)[0, 0] == 400 - 16  # 400 would run past the end


def test_window_of_a_short_mel_is_padded_with_silence() -> None:
    mel = np.zeros((80, 5), np.float32)
    window = audio.mel_window(mel, 3, 25.0)
    assert window.shape == (80, 16)
    assert np.all(window[:, :5] == 0)
    assert np.all(window[:, 5:] == audio.SILENCE)


@pytest.mark.parametrize(
    ("samples", "fps", "expected"),
    [
        (16000, 25.0, 25),
        (16000 * 4, 30000 / 1001, 120),
        (100, 25.0, 1),
        (0, 25.0, 1),
        (16000 + 320, 25.0, 26),
    ],
)
def test_frame_count(samples: int, fps: float, expected: int) -> None:
    assert audio.frame_count(samples, fps) == expected
