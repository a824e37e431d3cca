"""Realistic model inputs made on the spot: int8 calibration, variant checks and smoke runs.

Mel windows come from synthetic speech (`daemon.samples.speech_like`) through the real feature code;
faces are jittered crops of the astronaut photo stacked as the pipeline stacks them (lower half of
the first crop zeroed, a reference crop second, BGR / 255). No downloads. The photo comes from
scikit-image, needed only when variants are made (--fp16 / --int8).
"""

from __future__ import annotations

import cv2
import numpy as np

from daemon.render.audio import MEL_STEP, mel_spectrogram
from daemon.samples import FACE_CENTRE, astronaut_bgr, speech_like

FACE_SIDE = 96


def mel_windows(count: int, seed: int) -> np.ndarray:
    """(count, 1, 80, 16) float32 windows from random places in a few seconds of speech-like audio."""
    rng = np.random.default_rng(seed)
    mel = mel_spectrogram(speech_like(max(2.0, count * 0.2), seed=seed))
    starts = rng.integers(0, mel.shape[1] - MEL_STEP, count)
    return np.stack([mel[None, :, s : s + MEL_STEP] for s in starts]).astype(np.float32)


def face_stacks(count: int, seed: int) -> np.ndarray:
    """(count, 6, 96, 96) float32 face inputs: masked crop and reference crop, BGR in [0, 1]."""
    rng = np.random.default_rng(seed)
    photo = astronaut_bgr()
    stacks = [_stack(_crop(photo, rng), _crop(photo, rng)) for _ in range(count)]
    return np.stack(stacks).astype(np.float32)


def _crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 96x96 face crop with the box moved and resized a little, as a tracker's boxes wander."""
    side = rng.uniform(110, 160)
    cx, cy = (c + rng.uniform(-10, 10) for c in FACE_CENTRE)
    x1, y1 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    box = photo[y1 : int(y1 + side), x1 : int(x1 + side)]
    return cv2.resize(box, (FACE_SIDE, FACE_SIDE))


def _stack(crop: np.ndarray, reference: np.ndarray) -> np.ndarray:
    masked = crop.copy()
    masked[FACE_SIDE // 2 :] = 0
    return np.concatenate([masked, reference], axis=2).transpose(2, 0, 1) / 255.0


def batches(count: int, batch: int, seed: int, names: tuple[str, str]) -> list[dict[str, np.ndarray]]:
    """`count` samples in feeds of `batch` rows, keyed by the model's (mel, face) input names."""
    mel, face = mel_windows(count, seed), face_stacks(count, seed + 1)
    return [
        {names[0]: mel[i : i + batch], names[1]: face[i : i + batch]}
        for i in range(0, count - batch + 1, batch)
    ]


def random_feeds(batch: int, seed: int, names: tuple[str, str]) -> dict[str, np.ndarray]:
    """Uniform random inputs over the contract's ranges: mel in [-4, 4], face in [0, 1]."""
    rng = np.random.default_rng(seed)
    return {
        names[0]: rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32),
        names[1]: rng.uniform(0, 1, (batch, 6, 96, 96)).astype(np.float32),
    }
