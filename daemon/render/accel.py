"""GPU-side choices for the model runner: TensorRT/CUDA provider options, the TensorRT engine cache, and
IO binding. Pure where it can be (the options are tested on a CPU); nothing here needs a GPU to import.

The TensorRT engine cache lives under the state directory, one folder per model file and precision:

    <paths.state>/trt-cache/<model>/<precision>-<file key>/        engines + timing cache, READY marker
    <paths.state>/trt-cache/<model>/.<precision>-<file key>.building-<pid>/   a build in progress

TensorRT (through onnxruntime) writes its engine files itself, with plain writes: a crash mid-build
leaves a truncated engine. So a process that finds no READY folder builds into its own `.building-<pid>`
folder, runs one warm-up batch (the engine is built by then), and publishes a copy: copied into a
temp folder, READY written last, the temp folder renamed to the final name (atomic; a second worker
that built the same engine at the same time loses the rename and keeps its own copy). A crash at any
point leaves only a `.building-*` or `.publish-*` folder, which no one loads; `sweep_stale_builds`
removes those of dead processes at the next start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

log = structlog.get_logger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
READY = "READY"
# GiB of scratch TensorRT may use while choosing kernels (the H100/H200 have 80/141 GiB)
TRT_WORKSPACE = 4 * 2**30


@dataclass(frozen=True)
class TrtPlan:
    """What the TensorRT provider is told for one model file."""

    cache_dir: Path  # where this session reads and writes engines (READY folder or its own build folder)
    fp16: bool  # the fp16 variant was picked: let TensorRT choose fp16 kernels
    # "name:BxCxHxW,..." for the smallest, usual and largest batch: one engine for every batch up to
    # the largest, so a short tail batch never makes TensorRT build (and write) another engine
    profile: tuple[str, str, str] | None = None


def provider_options(provider: str, device_id: int, trt: TrtPlan | None = None) -> dict[str, str]:
    """onnxruntime's options for one provider. CUDA: the device, and cuDNN may take all the workspace it
    wants for its fastest convolutions. TensorRT: the device, the engine and timing caches in `trt.cache_dir`
    (no cache without a plan: every start then rebuilds, minutes for a big graph), fp16 when asked."""
    if provider == CUDA:
        return {
            "device_id": str(device_id),
            "cudnn_conv_use_max_workspace": "1",
            "do_copy_in_default_stream": "1",
        }
    if provider != TENSORRT:
        return {}
    options = {"device_id": str(device_id), "trt_max_workspace_size": str(TRT_WORKSPACE)}
    if trt is None:
        return options
    folder = str(trt.cache_dir)
    options |= {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": folder,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": folder,
        "trt_fp16_enable": "True" if trt.fp16 else "False",
    }
    if trt.profile:
        low, usual, high = trt.profile
        options |= {
            "trt_profile_min_shapes": low,
            "trt_profile_opt_shapes": usual,
            "trt_profile_max_shapes": high,
        }
    return options


def batch_profile(inputs: Mapping[str, tuple[int, ...]], usual: int, largest: int) -> tuple[str, str, str]:
    """TensorRT's min/opt/max shape strings for inputs whose first dimension is the batch."""

    def shapes(batch: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, (batch, *dims)))}" for name, dims in inputs.items())

    return shapes(1), shapes(usual), shapes(largest)


# ---------------------------------------------------------------- the engine cache folder


def cache_folder(root: Path, model: str, precision: str, onnx_file: Path) -> Path:
    """The published folder for this model file: keyed by the file (size, mtime) and the onnxruntime
    version, so a re-import or an upgrade gets a fresh folder instead of an engine built for another graph.
    (The GPU's compute capability is in TensorRT's own engine file names.)"""
    stat = onnx_file.stat()
    key = f"{onnx_file.name}:{stat.st_size}:{stat.st_mtime_ns}:{ort.__version__}"
    return root / model / f"{precision}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def is_ready(folder: Path) -> bool:
    return (folder / READY).is_file()


def build_folder(final: Path) -> Path:
    """A fresh folder of this process's own for TensorRT to build into (a stale one of ours is emptied)."""
    building = final.parent / f".{final.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    return building


def publish(building: Path, final: Path) -> bool:
    """Copy a finished build to `final`, whole or not at all; False when another worker published first."""
    if is_ready(final):
        return False
    staging = final.parent / f".{final.name}.publish-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(building, staging)
    with open(staging / READY, "w") as marker:  # last: a folder without it is never loaded
        marker.write(f"built by pid {os.getpid()}\n")
        marker.flush()
        os.fsync(marker.fileno())
    try:
        os.rename(staging, final)  # fails when final exists (another worker's build, or a torn old one)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True


def sweep_stale_builds(model_root: Path) -> list[Path]:
    """Remove `.building-PID` / `.publish-PID` folders of processes that are gone (a crash mid-build), and
    published-looking folders without READY (never made by `publish`; a hand copy or an old version)."""
    removed: list[Path] = []
    if not model_root.is_dir():
        return removed
    for entry in model_root.iterdir():
        stale = False
        if entry.name.startswith(".") and (".building-" in entry.name or ".publish-" in entry.name):
            pid = entry.name.rsplit("-", 1)[-1]
            stale = pid.isdigit() and not _alive(int(pid))
        elif entry.is_dir() and not is_ready(entry):
            stale = True
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- IO binding


def binds_io(provider: str) -> bool:
    """IO binding on the GPU providers only: it saves a device allocation and a copy per output there
    (H100, Wav2Lip fp16 batch 128: 7,713 -> 12,365 frames/s with inputs and outputs on the device); on a
    CPU session.run already works in place, so the plain call is kept."""
    return provider in (CUDA, TENSORRT)


class BoundRunner:
    """session.run through an IO binding: inputs bound from host arrays once per batch, the output
    pre-allocated on the session's device for each batch size seen (the full batch and the tail).
    One binding per thread: an IOBinding is not safe to share, the session is."""

    def __init__(self, session: ort.InferenceSession, output: str, device_id: int = 0) -> None:
        self.session = session
        self.output = output
        self.device = "cuda" if binds_io(session.get_providers()[0]) else "cpu"
        self.device_id = device_id if self.device == "cuda" else 0
        meta = next(o for o in session.get_outputs() if o.name == output)
        self._dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
        self._dims = meta.shape[1:] if all(isinstance(d, int) for d in meta.shape[1:]) else None
        self._local = threading.local()

    def run_on_device(self, feeds: dict[str, np.ndarray]) -> ort.OrtValue:
        """The output left where the session put it (on the GPU for CUDA/TensorRT): for GPU paste-back."""
        binding, outputs = self._binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        batch = len(next(iter(feeds.values())))
        if self._dims is None:
            binding.bind_output(self.output, self.device, self.device_id)
        else:
            if batch not in outputs:
                outputs[batch] = ort.OrtValue.ortvalue_from_shape_and_type(
                    [batch, *self._dims], self._dtype, self.device, self.device_id
                )
            binding.bind_ortvalue_output(self.output, outputs[batch])
        self.session.run_with_iobinding(binding)
        value: ort.OrtValue = binding.get_outputs()[0]
        return value

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out: np.ndarray = self.run_on_device(feeds).numpy()
        return out.copy() if self.device == "cpu" else out  # the pre-allocated buffer is reused next run

    def _binding(self) -> tuple[ort.IOBinding, dict[int, ort.OrtValue]]:
        local = self._local
        if not hasattr(local, "binding"):
            local.binding = self.session.io_binding()
            local.outputs = {}
        return local.binding, local.outputs
