"""What the render pipeline needs from a model, whatever its family (Wav2Lip and the baseline, MuseTalk).

The pipeline only ever calls these methods; it never asks which family it holds. Per job, `job_audio`
turns the audio into features once (shared by all the job's videos: `JobAudio.features` memoises them
under `audio_key`); per frame with a face, `prepare` crops it, `avatar_inputs` turns a batch of crops
into the model's avatar-only input (which depends on the avatar frame alone, so a family where that is
costly says `reuse_inputs` and the pipeline keeps it for the frame's next showing), `generate` turns those
and the audio windows into faces, and `paste` puts one back into its frame.

Adapters: `model.LipSyncModel` (Wav2Lip, baseline: 96x96 crops, mel windows) and
`musetalk.MuseTalkModel` (256x256 crops, Whisper windows, three ONNX graphs per frame).

The render pipeline holds frames as yuv420p planes: it gives `prepare` a BGR copy of `face_box` only (and
the box moved into it), and blends faces into the planes with `face_mask` (yuv.paste_yuv); `paste`, on a
BGR frame, is the same blend for callers holding BGR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from daemon.render.types import Box


class AudioFeatures(Protocol):
    """A job's audio as one family needs it; independent of any video (frame rate given per call)."""

    def window(self, frame_index: int, fps: float) -> np.ndarray:
        """The model's audio input for output frame `frame_index` (frames past the audio hear silence)."""
        ...


class LipSyncFamily(Protocol):
    """An open model of some family; one instance per model and execution provider, shared by jobs."""

    provider: str  # the onnxruntime execution provider actually in use
    reuse_inputs: bool  # `avatar_inputs` costs more than keeping its result for a frame shown again
    max_batch: int | None  # the most frames per model call on this provider (None: the settings decide)

    @property
    def inputs_key(self) -> str:
        """What `avatar_inputs` depends on besides the frame and box (weights, preprocessing version):
        the avatar cache keeps inputs under it."""
        ...

    @property
    def audio_key(self) -> str:
        """Models with the same key compute the same `job_audio` (so a job computes it once)."""
        ...

    def job_audio(self, wav: np.ndarray, scratch_dir: Path | None = None) -> AudioFeatures:
        """16 kHz mono float32 samples -> this family's features, computed once per job (features that
        grow large with the audio's length go to an unnamed file in `scratch_dir`)."""
        ...

    def prepare(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """The model's input crop for one BGR uint8 frame and the tracker's face box."""
        ...

    def avatar_inputs(self, crops: list[np.ndarray]) -> np.ndarray:
        """A batch of `prepare` crops -> the model's per-frame avatar input, stacked (B, ...)."""
        ...

    def generate(self, inputs: np.ndarray, audio: np.ndarray) -> list[np.ndarray]:
        """Stacked `avatar_inputs` rows and audio windows -> one BGR uint8 face per row."""
        ...

    def paste(self, frame: np.ndarray, box: Box, face: np.ndarray) -> np.ndarray:
        """A copy of `frame` with `face` blended in; `box` is the tracker's box `prepare` was given."""
        ...

    def face_box(self, box: Box, frame_shape: tuple[int, ...]) -> Box:
        """The region `prepare` reads and `paste` writes, for the tracker's box: the pipeline converts only
        this region of its yuv420p frame to BGR, and blends the face into it itself."""
        ...

    def face_mask(self, face_box: Box) -> np.ndarray:
        """(h, w, 1) float32 weights in 0..1 `paste` mixes the face in by, over `face_box`."""
        ...
