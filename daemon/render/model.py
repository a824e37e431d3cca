"""The lip-sync model runner: onnxruntime session, provider choice, and the Wav2Lip face tensors.

No torch here: the model is an ONNX file described by its model.json (modelspec.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

from daemon.render import accel, openvino_runtime
from daemon.render import audio as audio_features
from daemon.render.blend import mouth_mask, paste_back
from daemon.render.faces import crop_face
from daemon.render.modelspec import SPEC_NAME, ModelSpec
from daemon.render.openvino_runtime import OPENVINO, OpenVinoSession
from daemon.render.types import Box

log = structlog.get_logger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PREFERENCES = ("auto", "cuda", "tensorrt", "openvino", "cpu")
MEL_SHAPE = (1, 80, 16)
FACE_SHAPE = (6, 96, 96)
HALF = 96 // 2  # rows 48..95 of the crop are masked
SILENT_MEL = -4.0  # the normalised floor: what the mel of silence looks like


def choose_providers(
    preference: str = "auto", available: Sequence[str] | None = None, openvino: bool | None = None
) -> tuple[list[str], str]:
    """Providers to try, best first, and one line saying why. `available` defaults to this build's list,
    `openvino` to whether the openvino package imports here.

    A provider being in the build does not prove it works (a CUDA library may be missing); the session
    then falls back to CPU, which `LipSyncModel.open` logs as `execution_provider`. OPENVINO is not an
    onnxruntime provider: LipSyncModel runs the model in OpenVINO; the CPU provider after it serves the
    rest (MuseTalk, the face detector).
    """
    if preference not in PREFERENCES:
        raise ValueError(f"unknown execution provider '{preference}'; choose one of {', '.join(PREFERENCES)}")
    have = list(ort.get_available_providers() if available is None else available)
    has_openvino = openvino_runtime.available() if openvino is None else openvino
    if preference == "cpu":
        return [CPU], "CPU requested"
    if preference == "openvino":
        if has_openvino:
            return [OPENVINO, CPU], "OpenVINO requested"
        return [
            CPU
        ], "OpenVINO requested but the openvino package does not import (pip install openvino); using CPU"
    if preference == "tensorrt" and TENSORRT in have:
        return [TENSORRT, *([CUDA] if CUDA in have else []), CPU], "TensorrtExecutionProvider available"
    if CUDA in have:
        providers, using = [CUDA, CPU], "using CUDA"
    elif has_openvino:
        # OpenVINO ran Wav2Lip int8 2.2x and fp32 1.3x onnxruntime's on this CPU (see openvino_runtime.py)
        providers, using = [OPENVINO, CPU], "using OpenVINO on the CPU (the openvino package is installed)"
    else:
        providers, using = [CPU], "using CPU (the openvino package is not installed)"
    if preference == "tensorrt":
        return providers, f"TensorrtExecutionProvider not available in this onnxruntime build; {using}"
    if CUDA in have:
        return providers, f"CUDAExecutionProvider available; {using}"
    return providers, f"CUDAExecutionProvider not available in this onnxruntime build; {using}"


@dataclass(frozen=True)
class _Port:
    """One model input: its name in the file and the dtype it wants."""

    name: str
    dtype: type[np.floating]


class LipSyncModel:
    """An open ONNX session that maps (mel, face) batches to (B, 3, 96, 96) float32 images in [0, 1]."""

    def __init__(
        self,
        session: ort.InferenceSession,
        spec: ModelSpec,
        *,
        device_id: int = 0,
        io_binding: bool | None = None,
    ) -> None:
        self.session = session
        self.spec = spec
        self.device_id = device_id  # the GPU the session runs on: NVDEC decodes there too
        self.provider: str = session.get_providers()[0]
        self._mel = _port(session, spec.mel_input)
        self._face = _port(session, spec.face_input)
        self.batch: int | None = spec.batch or _fixed_batch(session, spec.mel_input)
        self.largest_batch: int | None = None  # a dynamic batch is cut to this (TensorRT's profile) when set
        bind = accel.binds_io(self.provider) if io_binding is None else io_binding
        self._bound = accel.BoundRunner(session, spec.output, device_id) if bind else None

    @classmethod
    def open(
        cls,
        folder: Path,
        *,
        providers: list[str],
        precision: str | None = None,
        threads: int = 0,
        device_id: int = 0,
        trt_cache: Path | None = None,
    ) -> LipSyncModel:
        spec = _load_spec(folder)
        path = _onnx_file(spec, folder, precision)
        build = (
            _trt_build(spec, path, precision, trt_cache) if providers[0] == TENSORRT and trt_cache else None
        )
        session = _openvino_session(path, threads) if providers[0] == OPENVINO else None
        if session is None:
            providers = [p for p in providers if p != OPENVINO]
            session = ort.InferenceSession(
                str(path),
                sess_options=_session_options(threads),
                providers=providers,
                provider_options=[
                    accel.provider_options(p, device_id, build.plan if build else None) for p in providers
                ],
            )
        model = cls(session, spec, device_id=device_id)
        if build is not None:
            model.largest_batch = TRT_LARGEST_BATCH if build.plan.profile else None
            build.finish(model)
        log.info(
            "execution_provider",
            provider=model.provider,
            requested=providers[0],
            model=spec.name,
            precision=precision or spec.precision,
            batch=model.batch or "dynamic",
        )
        return model

    # -- the model family interface (family.LipSyncFamily): Wav2Lip and the baseline --------------------

    @property
    def audio_key(self) -> str:
        return "wav2lip-mel"  # the mel does not depend on the weights: every Wav2Lip model shares it

    def job_audio(self, wav: np.ndarray, scratch_dir: Path | None = None) -> MelFeatures:
        # 80 mel bands at 80 Hz: 7.7 MB for 5 minutes, kept in memory
        return MelFeatures(audio_features.mel_spectrogram(wav), len(wav) / audio_features.SAMPLE_RATE)

    def prepare(self, frame: np.ndarray, box: Box) -> np.ndarray:
        return crop_face(frame, box)

    reuse_inputs = False  # stacking a crop costs less than keeping it
    max_batch: int | None = None  # small networks: render.batch_size and the frames budget decide
    inputs_key = "wav2lip-faces-v1"  # never kept, but named

    def avatar_inputs(self, crops: list[np.ndarray]) -> np.ndarray:
        return prepare_faces(crops)

    def generate(self, inputs: np.ndarray, audio: np.ndarray) -> list[np.ndarray]:
        """(B, 6, 96, 96) face stacks and (B, 80, 16) mel windows -> 96x96 BGR uint8 faces."""
        return to_images(self.infer(audio[:, None].astype(np.float32), inputs))

    def paste(self, frame: np.ndarray, box: Box, face: np.ndarray) -> np.ndarray:
        return paste_back(frame, box, face)

    def face_box(self, box: Box, frame_shape: tuple[int, ...]) -> Box:
        return box

    def face_mask(self, face_box: Box) -> np.ndarray:
        return mouth_mask(face_box.width, face_box.height)

    def infer(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        """(B,1,80,16) and (B,6,96,96) float32 -> (B,3,96,96) float32; chunks and pads for a fixed batch."""
        count = _check_inputs(mel, face)
        step = self.batch or min(max(count, 1), self.largest_batch or max(count, 1))
        parts = [self._run(mel[i : i + step], face[i : i + step]) for i in range(0, count, step)]
        if not parts:
            return np.zeros((0, 3, 96, 96), np.float32)
        return np.concatenate(parts)[:count]

    def _run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        real = len(mel)
        if self.batch and real < self.batch:
            mel, face = _pad(mel, self.batch), _pad(face, self.batch)
        feeds = {self._mel.name: mel.astype(self._mel.dtype), self._face.name: face.astype(self._face.dtype)}
        if self._bound is not None:
            return np.asarray(self._bound.run(feeds)[:real], dtype=np.float32)
        (out,) = self.session.run([self.spec.output], feeds)
        return np.asarray(out[:real], dtype=np.float32)


@dataclass(frozen=True)
class MelFeatures:
    """A job's Wav2Lip mel spectrogram (80, T), normalised."""

    mel: np.ndarray
    seconds: float

    def window(self, frame_index: int, fps: float) -> np.ndarray:
        """The frame's mel window; frames past the audio's end (a kept longer video) hear silence."""
        if frame_index / fps >= self.seconds:
            return np.full((80, audio_features.MEL_STEP), SILENT_MEL, dtype=np.float32)
        return audio_features.mel_window(self.mel, frame_index, fps)


def _load_spec(folder: Path) -> ModelSpec:
    if not (folder / SPEC_NAME).is_file():
        raise FileNotFoundError(
            f"no {SPEC_NAME} in {folder}: import the model with `lipsyncd model import`, "
            "or use the built-in model 'baseline'"
        )
    return ModelSpec.load(folder)


def _onnx_file(spec: ModelSpec, folder: Path, precision: str | None) -> Path:
    if precision and precision != spec.precision and precision not in spec.variants:
        have = ", ".join([spec.precision, *spec.variants]) or spec.precision
        raise ValueError(f"model '{spec.name}' in {folder} has no {precision} file; it has: {have}")
    path = spec.onnx_path(folder, precision)
    if not path.is_file():
        raise FileNotFoundError(f"model '{spec.name}': {path} is missing; import the model again")
    return path


def _openvino_session(path: Path, threads: int) -> OpenVinoSession | None:
    """The file compiled by OpenVINO, or None (logged) when it cannot be: onnxruntime's CPU runs it then."""
    try:
        return OpenVinoSession(path, threads=threads)
    except Exception as exc:  # noqa: BLE001 - an op OpenVINO lacks must not stop the render
        log.warning("openvino_failed", file=str(path), error=str(exc), fallback=CPU)
        return None


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime picks (all cores)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle model threads sleep instead of spinning: decode and encode threads share these cores, and the
    # spinning took their time (1080p Wav2Lip on 2 cores: 17 -> 19 frames/s, 117 -> 100 CPU ms a frame).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _provider_options(provider: str, device_id: int) -> dict[str, str]:
    return accel.provider_options(provider, device_id)


TRT_USUAL_BATCH = 64  # TensorRT tunes its kernels for this batch (the GPU bench's batch) ...
TRT_LARGEST_BATCH = 256  # ... and the engine takes any batch up to this one; bigger inputs are cut


@dataclass
class _TrtBuild:
    """A TensorRT session's cache: a published folder to load, or this process's build to publish."""

    plan: accel.TrtPlan
    final: Path
    building: Path | None  # None: the published folder was found

    def finish(self, model: LipSyncModel) -> None:
        if model.provider != TENSORRT:  # the provider did not load (no TensorRT libraries): nothing was built
            if self.building is not None:
                shutil.rmtree(self.building, ignore_errors=True)
            model.largest_batch = None
            return
        if self.building is None:
            log.info("trt_engine_cache", folder=str(self.final), state="loaded")
            return
        # one batch at each end of the profile: TensorRT builds the engine on the first run at the latest
        for count in {1, model.batch or TRT_LARGEST_BATCH}:
            model.infer(np.zeros((count, *MEL_SHAPE), np.float32), np.zeros((count, *FACE_SHAPE), np.float32))
        published = accel.publish(self.building, self.final)
        log.info("trt_engine_cache", folder=str(self.final), state="published" if published else "kept_other")


def _trt_build(spec: ModelSpec, path: Path, precision: str | None, root: Path) -> _TrtBuild:
    chosen = precision or spec.precision
    final = accel.cache_folder(root, spec.name, chosen, path)
    accel.sweep_stale_builds(final.parent)
    dims = {spec.mel_input: MEL_SHAPE, spec.face_input: FACE_SHAPE}
    dynamic = not spec.batch and _file_batch(path, spec.mel_input) is None
    profile = accel.batch_profile(dims, TRT_USUAL_BATCH, TRT_LARGEST_BATCH) if dynamic else None
    ready = accel.is_ready(final)
    folder = final if ready else accel.build_folder(final)
    return _TrtBuild(accel.TrtPlan(folder, chosen == "fp16", profile), final, None if ready else folder)


def _file_batch(path: Path, name: str) -> int | None:
    """The file's fixed batch, read through a CPU session (a second or so; TensorRT's build takes minutes):
    TensorRT takes a batch profile for a dynamic batch only."""
    return _fixed_batch(ort.InferenceSession(str(path), providers=[CPU]), name)


def _port(session: ort.InferenceSession, name: str) -> _Port:
    for item in session.get_inputs():
        if item.name == name:
            return _Port(name, np.float16 if item.type == "tensor(float16)" else np.float32)
    names = ", ".join(i.name for i in session.get_inputs())
    raise ValueError(f"the model has no input '{name}' (it has {names}); fix model.json")


def _fixed_batch(session: ort.InferenceSession, name: str) -> int | None:
    dim = next(i.shape[0] for i in session.get_inputs() if i.name == name)
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_inputs(mel: np.ndarray, face: np.ndarray) -> int:
    if mel.shape[1:] != MEL_SHAPE or face.shape[1:] != FACE_SHAPE or len(mel) != len(face):
        raise ValueError(f"expected mel (B,1,80,16) and face (B,6,96,96), got {mel.shape} and {face.shape}")
    return len(mel)


def _pad(batch: np.ndarray, size: int) -> np.ndarray:
    filler = np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)
    return np.concatenate([batch, filler])


def prepare_faces(crops: Sequence[np.ndarray]) -> np.ndarray:
    """(96,96,3) BGR uint8 crops -> (B,6,96,96) float32: [crop with rows 48.. zeroed, crop] / 255.

    The reference crop is the same crop, as the Wav2Lip inference script does.
    """
    batch = np.stack(crops).astype(np.float32) / 255.0
    masked = batch.copy()
    masked[:, HALF:] = 0.0
    return np.ascontiguousarray(np.concatenate([masked, batch], axis=3).transpose(0, 3, 1, 2))


def to_images(out: np.ndarray) -> list[np.ndarray]:
    """(B,3,96,96) float in [0,1] -> list of (96,96,3) BGR uint8 images."""
    pixels = np.clip(np.rint(out.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)
    return list(pixels)
