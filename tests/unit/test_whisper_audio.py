"""MuseTalk's audio features: Whisper's log-mel against transformers, and the per-frame windows
against a plain loop-based reading of the reference (MuseTalk's get_whisper_chunk)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.render import whisper_audio as wa
from daemon.samples import speech_like

SR = 16000
# whisper-tiny's preprocessor_config.json, the file MuseTalk users bring
TINY_PREPROCESSOR = {
    "feature_size": 80,
    "sampling_rate": 16000,
    "hop_length": 160,
    "chunk_length": 30,
    "n_fft": 400,
}


def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    t = np.arange(SR * 5) / SR
    return {
        "speech": speech_like(12.0, seed=2),
        "silence": np.zeros(SR * 3, np.float32),
        "sine": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "short": (0.2 * rng.standard_normal(3000)).astype(np.float32),  # under 0.2 s
        "exactly_30s": speech_like(30.0, seed=5),
        "quiet_noise": (1e-4 * rng.standard_normal(SR * 4)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def extractor() -> Any:
    try:
        from transformers import WhisperFeatureExtractor
    except ImportError as exc:  # only the import is optional; any other failure should fail the test
        pytest.skip(f"transformers cannot be imported ({exc}): install the test extra")
    return WhisperFeatureExtractor(padding_value=0.0, **TINY_PREPROCESSOR)


def test_transformers_defaults_are_whisper_tiny(extractor: Any) -> None:
    """The constants we mirror are those of the default extractor (what AutoFeatureExtractor builds)."""
    default = type(extractor)()
    for key, value in TINY_PREPROCESSOR.items():
        assert getattr(default, key) == value, key
    assert default.n_samples == wa.SEGMENT_SAMPLES
    assert default.nb_max_frames == wa.SEGMENT_FRAMES
    np.testing.assert_allclose(wa._mel_filters().T, default.mel_filters, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", list(signals()))
def test_log_mel_matches_transformers(extractor: Any, name: str) -> None:
    wav = signals()[name]
    # as MuseTalk calls it; with torch installed this is transformers' torch (float32) STFT path
    expected = extractor(wav, sampling_rate=SR, return_tensors="np").input_features[0]
    got = wa.log_mel(wav)
    assert got.shape == (80, 3000)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-4


def test_segments_of_long_audio_match_transformers(extractor: Any) -> None:
    wav = speech_like(70.0, seed=7)  # 30 s + 30 s + 10 s (the last one zero-padded)
    got = wa.segment_features(wav)
    assert len(got) == 3
    for k, features in enumerate(got):
        segment = wav[k * wa.SEGMENT_SAMPLES : (k + 1) * wa.SEGMENT_SAMPLES]
        expected = extractor(segment, sampling_rate=SR, return_tensors="np").input_features[0]
        assert np.abs(features - expected).max() < 1e-4, f"segment {k}"


def test_log_mel_batch_normalises_each_segment_alone() -> None:
    loud, quiet = speech_like(5.0, seed=1), 1e-3 * speech_like(5.0, seed=1)
    batch = wa.log_mel_batch(np.stack([loud, quiet]))
    np.testing.assert_array_equal(batch[0], wa.log_mel(loud))
    np.testing.assert_array_equal(batch[1], wa.log_mel(quiet))


def test_too_long_segment_is_refused() -> None:
    with pytest.raises(ValueError, match="480000"):
        wa.log_mel(np.zeros(wa.SEGMENT_SAMPLES + 1, np.float32))


class FakeEncoder:
    """Stacked 'hidden states' whose values name the global step and layer: (step + 1) x 8 + layer.

    Zero padding reads 0, so a shifted, unpadded or mis-joined window fails the comparisons.
    """

    def __init__(self, layers: int = 5, width: int = 384) -> None:
        self.layers, self.width = layers, width
        self.seen: list[np.ndarray] = []

    def __call__(self, features: np.ndarray) -> np.ndarray:
        assert features.dtype == np.float32
        assert features.shape[1:] == (80, 3000)
        first = sum(len(f) for f in self.seen) * wa.ENCODER_STEPS
        self.seen.append(features)
        steps = first + np.arange(len(features) * wa.ENCODER_STEPS).reshape(len(features), -1)
        values = (steps[:, :, None] + 1) * 8 + np.arange(self.layers)[None, None, :]
        return np.broadcast_to(values[..., None], (*values.shape, self.width)).astype(np.float32)


def reference_windows(all_hidden: np.ndarray, n_samples: int, fps: float) -> list[np.ndarray]:
    """The design's reading of MuseTalk, slowly and with exact fractions (but the true fps)."""
    rate = Fraction(str(fps))
    actual = math.floor(Fraction(n_samples, SR) * 50)
    hidden = all_hidden[:actual]
    m = math.ceil(Fraction(50) / rate)
    zero = np.zeros_like(all_hidden[0])
    padded = [zero] * (2 * m) + list(hidden) + [zero] * (6 * m)
    windows = []
    for i in range(math.floor(Fraction(n_samples, SR) * rate)):
        start = math.floor(i * 50 / rate)
        clip = padded[start : start + 10]
        assert len(clip) == 10
        windows.append(np.stack([clip[t][layer] for t in range(10) for layer in range(all_hidden.shape[1])]))
    return windows


def noise(n_samples: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(n_samples).standard_normal(n_samples)).astype(np.float32)


def stacked_steps(segments: int, width: int = 8) -> np.ndarray:
    """What FakeEncoder gives for `segments` segments, joined: (segments x 1500, 5, width)."""
    return FakeEncoder(width=width)(np.zeros((segments, 80, 3000), np.float32)).reshape(-1, 5, width)


@pytest.mark.parametrize("fps", [25.0, 29.97, 30.0])
def test_windows_match_loop_reading_of_reference(fps: float) -> None:
    n_samples = 101 * SR + 123  # four segments; at 29.97 fps the frames pass i = 2997 (step 5000 exactly)
    encoder = FakeEncoder(width=8)
    features = wa.encode_audio(noise(n_samples), encoder, batch=3)
    assert [len(f) for f in encoder.seen] == [3, 1]
    expected = reference_windows(stacked_steps(4), n_samples, fps)
    assert len(expected) == math.floor(n_samples / SR * fps) > 2500
    for i, window in enumerate(expected):
        np.testing.assert_array_equal(features.window(i, fps), window, err_msg=f"frame {i} at {fps} fps")
    np.testing.assert_array_equal(features.windows(fps, 100, 7), np.stack(expected[100:107]))


def test_true_frame_rate_not_truncated() -> None:
    """At 29.97 fps frame 2000 starts at padded step floor(2000 x 50 / 29.97) = 3336, not 3448 (29 fps)."""
    features = wa.encode_audio(noise(80 * SR), FakeEncoder(width=2))
    first_step = (features.window(2000, 29.97)[0, 0] / 8) - 1  # data step of the window's first row
    assert first_step == 3336 - 2 * 2


def test_encoder_sees_the_segments_log_mels_in_order() -> None:
    wav = noise(65 * SR)
    encoder = FakeEncoder(width=2)
    wa.encode_audio(wav, encoder, batch=2)
    seen = np.concatenate(encoder.seen)
    np.testing.assert_array_equal(seen, np.stack(wa.segment_features(wav)))


def test_segments_join_across_the_30s_boundary() -> None:
    features = wa.encode_audio(noise(45 * SR), FakeEncoder(width=3))
    assert features.hidden.shape == (45 * 50, 5, 3)
    # at 25 fps (m = 2) frame 750 reads data steps [1496, 1506): the last four of segment 0, then segment 1
    window = features.window(750, 25.0).reshape(10, 5, 3)
    np.testing.assert_array_equal(window[:, 0, 0], (np.arange(1496, 1506) + 1) * 8)
    np.testing.assert_array_equal(window[:, :, 1], (np.arange(1496, 1506)[:, None] + 1) * 8 + np.arange(5))


def test_padding_at_start_and_end() -> None:
    n_samples = 2 * SR + 319  # 319 samples is less than one 20 ms step: floor(seconds x 50) = 100 steps
    features = wa.encode_audio(noise(n_samples), FakeEncoder(width=1))
    assert features.hidden.shape[0] == 100  # the segment's 1400 padding steps are cut
    first = features.window(0, 25.0)[:, 0].reshape(10, 5)[:, 0]
    np.testing.assert_array_equal(first, [0, 0, 0, 0, 8, 16, 24, 32, 40, 48])  # 2m = 4 zero steps, then 0..5
    last = features.window(49, 25.0)[:, 0].reshape(10, 5)[:, 0]  # the reference's last frame: steps 94..103
    np.testing.assert_array_equal(last, [(s + 1) * 8 for s in range(94, 100)] + [0, 0, 0, 0])
    at_60 = features.window(0, 60.0)[:, 0].reshape(10, 5)[:, 0]  # m = 1: two zero steps
    np.testing.assert_array_equal(at_60, [0, 0] + [(s + 1) * 8 for s in range(8)])
    assert not features.window(10_000, 25.0).any()  # far past the end: all padding


def test_empty_audio_gives_zero_windows() -> None:
    encoder = FakeEncoder()
    features = wa.encode_audio(np.zeros(0, np.float32), encoder)
    assert encoder.seen == []
    assert features.window(0, 25.0).shape == (50, 384)
    assert not features.window(0, 25.0).any()


def test_encoder_output_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="stacked hidden states"):
        wa.encode_audio(noise(SR), lambda f: np.zeros((len(f), 1500, 384), np.float32))
    with pytest.raises(ValueError, match="1500"):
        wa.encode_audio(noise(SR), lambda f: np.zeros((len(f), 1499, 5, 384), np.float32))


def test_one_segment_a_call_by_default_and_the_same_features_as_batched() -> None:
    """onnxruntime keeps the memory of the largest batch it ran: 4 segments a call held ~1 GB more for
    5 minutes of audio (tiny MuseTalk). The default feeds one; the result does not depend on it."""
    wav = noise(95 * SR + 7)
    one, four = FakeEncoder(width=3), FakeEncoder(width=3)
    default = wa.encode_audio(wav, one)
    assert [len(f) for f in one.seen] == [1, 1, 1, 1]
    np.testing.assert_array_equal(default.hidden[:], wa.encode_audio(wav, four, batch=4).hidden[:])
    assert default.hidden.shape == (math.floor(95 * 50 + 7 * 50 / SR), 5, 3)


def test_spilled_steps_equal_the_in_memory_ones_and_leave_no_file(tmp_path: Path) -> None:
    """A long voice-over's encoder output goes to an unnamed file in the scratch folder (5 minutes are
    115 MB for whisper-tiny): the windows read back from it are the ones an in-memory array gives."""
    wav = noise(65 * SR + 123)
    spilled = wa.encode_audio(wav, FakeEncoder(width=3), spill_dir=tmp_path / "scratch")
    in_memory = wa.encode_audio(wav, FakeEncoder(width=3), spill=False)
    assert isinstance(spilled.hidden, wa.SpilledSteps)
    assert isinstance(in_memory.hidden, np.ndarray)
    assert spilled.hidden.shape == in_memory.hidden.shape
    np.testing.assert_array_equal(spilled.hidden[:], in_memory.hidden)
    for fps in (25.0, 29.97):
        for i in (0, 1, 750, 1624, 1625, 5000):
            np.testing.assert_array_equal(spilled.window(i, fps), in_memory.window(i, fps))
    np.testing.assert_array_equal(spilled.windows(25.0, 100, 7), in_memory.windows(25.0, 100, 7))
    assert list((tmp_path / "scratch").iterdir()) == []  # the file has no name: nothing to clean up
