"""The MuseTalk 1.5 family: Whisper audio windows, 256x256 crops, VAE latents and one UNet pass a frame.

Four ONNX graphs written by `lipsyncd model import` (model.json kind "musetalk"): `audio_encoder` (once
per job: log-mel segments -> stacked Whisper hidden states), and per batch of frames `vae_encoder`
(masked and full crops -> latents, posterior mean x 0.18215), `unet` (latents + audio window -> latent;
timestep 0 and the positional encoding are inside the graph) and `vae_decoder` (-> RGB in [0, 1]).
All have a dynamic batch. The sessions are opened once per model and shared by every job.

Blending uses no face-parsing network (the reference's BiSeNet weights are non-commercial): see
`lower_face_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import structlog

from daemon.render import whisper_audio
from daemon.render.blend import paste_masked
from daemon.render.faces import PAD_BOTTOM
from daemon.render.model import _load_spec, _provider_options, _session_options
from daemon.render.modelspec import ModelSpec
from daemon.render.types import LEFT_EYE, NOSE_TIP, RIGHT_EYE, Box

log = structlog.get_logger(__name__)

SIZE = 256  # the crop the VAE takes
HALF = SIZE // 2  # rows 128..255 of the masked crop are zeroed (the mouth the UNet fills in)
ROLES = ("audio_encoder", "vae_encoder", "unet", "vae_decoder")
# Frames per call on a CPU: onnxruntime's CPU arena keeps each graph's largest batch (full-size VAE
# decoder ~500 MiB a frame, encoder ~190 MiB an image), so 1080p's usual batch of 10 held ~14 GB; a
# bigger batch was no faster on a CPU (bench section musetalk: UNet 0.55 frames/s at 1, 0.30 at 8).
CPU_MAX_BATCH = 4
# Box-only detectors (Haar, S3FD): where landmark 29 (the lower end of the nose bridge) sits in the box,
# as a fraction of the way from the box's top (about the eyebrows) to the chin: typical face proportions.
NOSE_AT = 0.55
# With landmarks (YuNet): the bridge's points 27..30 are evenly spaced from about the eyes' level (27) to
# the nose tip (30), so 29 lies this fraction of the way from the eyes' mean height to the nose tip.
BRIDGE_AT = 2 / 3
EXPAND = 1.5  # the reference blends inside a square crop 1.5x the face box ...
FEATHER = 0.05  # ... with a Gaussian feather this fraction of that crop's side


def musetalk_box(box: Box, frame_shape: tuple[int, ...]) -> Box:
    """MuseTalk's face box, from the tracker's box and, where the detector gives them, its landmarks.

    MuseTalk takes it from 68 landmarks: x from the landmarks' min to max, y2 = the chin (lowest
    landmark) + 10 px (`extra_margin`, v1.5, clamped to the frame), y1 = nose (landmark 29) minus
    (chin - nose). Ours:
    - x1, x2: the box's own (a frontal-face box spans about the jaw's width, as the landmarks do; five
      points say nothing about the jaw);
    - y2: the box's y2 as it is. The tracker already pads every box 10 px at the bottom (Wav2Lip's
      `pads 0 10 0 0`, clamped to the frame), which is MuseTalk's extra margin; so chin = y2 - 10
      (the detector's box ends at about the chin);
    - nose (landmark 29): with YuNet's five landmarks, BRIDGE_AT (2/3) of the way from the eyes' mean
      height down to the nose tip (the bridge's points are evenly spaced from eye level to the tip);
      with a box only (Haar, S3FD), NOSE_AT (55%) of the way from the box's top to the chin, typical
      proportions, so the crop's top moves with the box, not with the face's own pose;
    - y1 = nose - (chin - nose): the crop runs from about the eyes to below the chin, as MuseTalk's does.
    Where the tracker's pad was clamped at the frame's bottom edge the chin is taken a little high.
    """
    height = frame_shape[0]
    chin = box.y2 - PAD_BOTTOM
    nose = min(max(_nose_y(box, chin), box.y1), chin)  # landmarks far off the box are not trusted beyond it
    top = round(nose - (chin - nose))
    y2 = min(box.y2, height)
    return Box(box.x1, min(max(0, top), y2 - 1), box.x2, y2)


def _nose_y(box: Box, chin: int) -> float:
    """The height of landmark 29 (see `musetalk_box`)."""
    right, left, tip = box.point(RIGHT_EYE), box.point(LEFT_EYE), box.point(NOSE_TIP)
    if right is None or left is None or tip is None:
        return box.y1 + NOSE_AT * (chin - box.y1)
    eyes = (right[1] + left[1]) / 2
    return eyes + BRIDGE_AT * (tip[1] - eyes)


def crop_256(frame: np.ndarray, box: Box) -> np.ndarray:
    """The (256, 256, 3) BGR uint8 crop of MuseTalk's box, resized with Lanczos as the reference does."""
    face = musetalk_box(box, frame.shape)
    return cv2.resize(
        frame[face.y1 : face.y2, face.x1 : face.x2], (SIZE, SIZE), interpolation=cv2.INTER_LANCZOS4
    )


def vae_inputs(crops: list[np.ndarray]) -> np.ndarray:
    """BGR uint8 crops -> (2B, 3, 256, 256) float32 in [-1, 1]: the B masked crops, then the B full ones.

    BGR -> RGB, /255; the masked copy has rows 128..255 zeroed before normalising, so they become -1.
    """
    rgb = np.stack(crops)[..., ::-1].astype(np.float32) / 255.0
    masked = rgb.copy()
    masked[:, HALF:] = 0.0
    both = np.concatenate([masked, rgb]).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(both * 2.0 - 1.0, dtype=np.float32)


def unet_latents(latents: np.ndarray) -> np.ndarray:
    """(2B, 4, 32, 32) latents of `vae_inputs` -> (B, 8, 32, 32): masked then full, on channels."""
    count = len(latents) // 2
    return np.ascontiguousarray(np.concatenate([latents[:count], latents[count:]], axis=1))


def to_bgr(images: np.ndarray) -> list[np.ndarray]:
    """(B, 3, 256, 256) RGB in [0, 1] -> (256, 256, 3) BGR uint8 faces."""
    pixels = np.clip(np.rint(images.transpose(0, 2, 3, 1)[..., ::-1] * 255.0), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(p) for p in pixels]


@lru_cache(maxsize=64)
def lower_face_mask(width: int, height: int) -> np.ndarray:
    """(height, width, 1) float32 weights for a box of that size: the generated lower face, feathered.

    Stands in for the reference's face-parsing mask. The reference blends inside a square crop 1.5x the
    box, centred on it, keeps the crop's upper half, and feathers with a Gaussian of about 5% of the
    crop. Here: a rectangle from the box's middle row (the crop's middle) to its bottom, inset on every
    side by the feather's reach + 1, blurred with that Gaussian; so the weight is exactly 0 on the
    box's edges and above its middle, 1 over the mouth and jaw. Read-only: shared through the cache.
    """
    side = 2 * int(max(width, height) // 2 * EXPAND)
    kernel = int(FEATHER * side) // 2 * 2 + 1
    inset = kernel // 2 + 1
    mask = np.zeros((height, width), np.float32)
    mask[height // 2 + inset : height - inset, inset : width - inset] = 1.0
    feathered: np.ndarray = cv2.GaussianBlur(mask, (kernel, kernel), 0)[..., None]
    feathered.flags.writeable = False
    return feathered


@dataclass(frozen=True)
class _Graph:
    session: ort.InferenceSession
    output: str

    def __call__(self, **feeds: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output], feeds)
        return np.asarray(out, dtype=np.float32)


class MuseTalkModel:
    """The open graphs of one imported MuseTalk model; implements `family.LipSyncFamily`."""

    def __init__(self, graphs: dict[str, _Graph], spec: ModelSpec, audio_file: Path, vae_file: Path) -> None:
        self.spec = spec
        self._graphs = graphs
        self._audio_file = audio_file
        self._vae_file = vae_file
        self.provider: str = graphs["unet"].session.get_providers()[0]
        self.max_batch = CPU_MAX_BATCH if self.provider == "CPUExecutionProvider" else None

    @classmethod
    def open(
        cls,
        folder: Path,
        *,
        providers: list[str],
        precision: str | None = None,
        threads: int = 0,
        device_id: int = 0,
    ) -> MuseTalkModel:
        spec = _load_spec(folder)
        files = {role: _graph_file(spec, folder, role, precision) for role in ROLES}
        graphs = {
            role: _Graph(
                ort.InferenceSession(
                    str(path),
                    sess_options=_session_options(threads),
                    providers=providers,
                    provider_options=[_provider_options(p, device_id) for p in providers],
                ),
                _output_name(role),
            )
            for role, path in files.items()
        }
        model = cls(graphs, spec, files["audio_encoder"], files["vae_encoder"])
        log.info(
            "execution_provider",
            provider=model.provider,
            requested=providers[0],
            model=spec.name,
            precision=precision or spec.precision,
            batch="dynamic",
        )
        return model

    @property
    def audio_key(self) -> str:
        return f"musetalk-whisper:{self._audio_file.resolve()}"

    def job_audio(self, wav: np.ndarray, scratch_dir: Path | None = None) -> whisper_audio.WhisperFeatures:
        encoder = self._graphs["audio_encoder"]
        return whisper_audio.encode_audio(
            wav, lambda mels: encoder(input_features=mels), spill_dir=scratch_dir
        )

    def prepare(self, frame: np.ndarray, box: Box) -> np.ndarray:
        return crop_256(frame, box)

    reuse_inputs = True  # two VAE encodes a frame: a third of the work (32 KB of latents to keep)
    # bump when musetalk_box, crop_256 or vae_inputs change: kept latents then miss (v3: crops are
    # converted from yuv420p planes, no longer from a swscale BGR frame)
    GEOMETRY = "v3"

    @property
    def inputs_key(self) -> str:
        vae = self._vae_file.stat()
        return f"musetalk-latents-{self.GEOMETRY} {self._vae_file.resolve()} {vae.st_size} {vae.st_mtime_ns}"

    def avatar_inputs(self, crops: list[np.ndarray]) -> np.ndarray:
        """256x256 BGR crops -> (B, 8, 32, 32) latents, masked then full."""
        return unet_latents(self._graphs["vae_encoder"](image=vae_inputs(crops)))

    def generate(self, inputs: np.ndarray, audio: np.ndarray) -> list[np.ndarray]:
        """(B, 8, 32, 32) latents and (B, 50, 384) Whisper windows -> 256x256 BGR faces."""
        predicted = self._graphs["unet"](latent=inputs, audio=audio.astype(np.float32))
        return to_bgr(self._graphs["vae_decoder"](latent=predicted))

    def paste(self, frame: np.ndarray, box: Box, face: np.ndarray) -> np.ndarray:
        face_box = musetalk_box(box, frame.shape)
        if face_box.width <= 0 or face_box.height <= 0:
            return frame.copy()
        return paste_masked(frame, face_box, face, lower_face_mask(face_box.width, face_box.height))

    def face_box(self, box: Box, frame_shape: tuple[int, ...]) -> Box:
        return musetalk_box(box, frame_shape)

    def face_mask(self, face_box: Box) -> np.ndarray:
        return lower_face_mask(face_box.width, face_box.height)


_OUTPUTS = {
    "audio_encoder": "hidden_states",
    "vae_encoder": "latent",
    "unet": "pred_latent",
    "vae_decoder": "image",
}


def _output_name(role: str) -> str:
    return _OUTPUTS[role]


def _graph_file(spec: ModelSpec, folder: Path, role: str, precision: str | None) -> Path:
    have = spec.graphs.get(role)
    if not have:
        raise LookupError(
            f"model '{spec.name}' in {folder}: model.json names no {role} graph; import it again"
        )
    if precision and precision not in have:
        raise ValueError(
            f"model '{spec.name}' in {folder} has no {precision} {role}; it has: {', '.join(have)}"
        )
    path = spec.graph_path(folder, role, precision)
    if not path.is_file():
        raise FileNotFoundError(f"model '{spec.name}': {path} is missing; import the model again")
    return path
