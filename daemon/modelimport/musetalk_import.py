"""Import a MuseTalk 1.5 (or 1.0) release folder: four ONNX graphs, each checked against its torch module.

models/NAME/ gets audio_encoder.onnx, vae_encoder.onnx, unet.onnx (+ unet.onnx.data: external data,
since the real fp32 UNet is over 2 GB), vae_decoder.onnx, their fp16 variants with --fp16, and a
model.json of kind "musetalk". Each graph is exported with batch 1 and checked with batch 2 or 4 (so a
batch fixed by mistake fails) on realistic inputs chained as the pipeline chains them: Whisper features
of speech-like audio, astronaut face crops (masked and full), their latents and audio windows, and
the UNet's output for the decoder. The networks are loaded one at a time to bound memory.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import structlog
import torch
from torch import nn

from daemon.files import file_sha256
from daemon.modelimport import torch_export
from daemon.modelimport.errors import ModelImportError
from daemon.modelimport.musetalk_arch import load_audio, load_unet, load_vae, window
from daemon.modelimport.musetalk_files import AUDIO_STEPS, FACE, FEATURES, MuseTalkFiles, find_files
from daemon.modelimport.publish import check_free, model_name, publish, staging
from daemon.modelimport.report import ImportReport, VariantCheck
from daemon.modelimport.variants import compare, write_fp16
from daemon.render.modelspec import ModelSpec
from daemon.samples import FACE_CENTRE, astronaut_bgr, speech_like

log = structlog.get_logger(__name__)

TOLERANCE = 1e-3  # fp32 ONNX vs torch, max abs, per graph
ROLES = ("audio_encoder", "vae_encoder", "unet", "vae_decoder")
_PORTS = {  # role -> (inputs, output)
    "audio_encoder": (("input_features",), "hidden_states"),
    "vae_encoder": (("image",), "latent"),
    # ONNX forbids an output named like an input, so the UNet's output latent is `pred_latent`
    "unet": (("latent", "audio"), "pred_latent"),
    "vae_decoder": (("latent",), "image"),
}
_EXTERNAL = frozenset({"unet"})  # always external data: the real fp32 UNet is over 2 GB
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class GraphCheck:
    role: str
    file: str
    error: float  # max abs, fp32 ONNX vs torch


def import_musetalk(
    folder: Path, models_dir: Path, *, name: str | None = None, fp16: bool = False, overwrite: bool = False
) -> ImportReport:
    """Convert a MuseTalk release folder into models_dir/NAME; nothing is written if a check fails."""
    started = time.monotonic()
    name = model_name(folder.resolve(), name)
    target = models_dir / name
    check_free(target, overwrite)
    files = find_files(folder)
    with staging(models_dir, name) as stage:
        checks = _export_all(files, stage)
        variants = tuple(_fp16(stage, check.role) for check in checks) if fp16 else ()
        spec = _spec(name, files, variants, checks)
        spec.save(stage)
        written = sorted(p.name for p in stage.iterdir())
        publish(stage, target, overwrite)
    errors = tuple((c.file, c.error) for c in checks)
    log.info("model_imported", model=name, kind="musetalk", seconds=round(time.monotonic() - started, 1))
    return ImportReport(
        spec, target, tuple(target / f for f in written), max(e for _, e in errors), variants, (), errors
    )


def _export_all(files: MuseTalkFiles, stage: Path) -> list[GraphCheck]:
    """All weights loaded first (a bad file fails in seconds), then each graph exported and checked.

    Outputs of one check feed the next, as the pipeline chains the graphs; each network is dropped
    once exported, which bounds memory with the real 3.4 GB UNet.
    """
    audio, (encoder, decoder), unet = load_audio(files), load_vae(files), load_unet(files)
    log.info("musetalk_weights_loaded", version=files.version, folder=str(files.folder))
    checks: list[GraphCheck] = []
    hidden = _graph(stage, "audio_encoder", audio, {"input_features": features(2)}, checks)
    del audio
    latents = _graph(stage, "vae_encoder", encoder, {"image": faces(2)}, checks)
    unet_feeds = {"latent": np.concatenate([latents[:2], latents[2:]], axis=1), "audio": _windows(hidden)}
    predicted = _graph(stage, "unet", unet, unet_feeds, checks)
    del unet
    _graph(stage, "vae_decoder", decoder, {"latent": predicted}, checks)
    return checks


def _graph(stage: Path, role: str, module: nn.Module, feeds: Feeds, checks: list[GraphCheck]) -> np.ndarray:
    """Export `module` as ROLE.onnx (batch 1), check it on `feeds`; returns torch's outputs."""
    path = stage / f"{role}.onnx"
    inputs, output = _PORTS[role]
    example = [torch.from_numpy(feeds[n][:1]) for n in inputs]
    dynamic = {n: {0: "batch"} for n in (*inputs, output)}
    _export(module, example, path, inputs, output, dynamic, external=role in _EXTERNAL)
    expected, error = _versus_torch(module, path, feeds, inputs)
    log.info("graph_checked", graph=role, onnx_vs_torch=error)
    if not error <= TOLERANCE:  # also catches NaN
        raise ModelImportError(
            f"the ONNX export of {role} differs from PyTorch by {error:.2e} (limit {TOLERANCE:.0e}); "
            "nothing was written. Please report this with your torch, diffusers, transformers and "
            "onnxruntime versions."
        )
    checks.append(GraphCheck(role, path.name, error))
    return expected


def _export(
    module: nn.Module,
    example: list[torch.Tensor],
    path: Path,
    inputs: tuple[str, ...],
    output: str,
    dynamic: dict[str, dict[int, str]],
    *,
    external: bool,
) -> None:
    if not external:
        torch_export.export(module, example, path, inputs, [output], dynamic, fold=False)
        return
    # torch writes a large model as one file per tensor; gather them into one PATH.data file
    scratch = path.parent / f"{path.stem}.export"
    scratch.mkdir()
    try:
        torch_export.export(module, example, scratch / path.name, inputs, [output], dynamic, fold=False)
        onnx.save(
            onnx.load(str(scratch / path.name)),
            str(path),
            save_as_external_data=True,
            location=f"{path.name}.data",
        )
    finally:
        shutil.rmtree(scratch)  # a folder left in the stage would be published with the model


@torch.no_grad()
def _versus_torch(
    module: nn.Module, path: Path, feeds: Feeds, inputs: tuple[str, ...]
) -> tuple[np.ndarray, float]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = module(*(torch.from_numpy(feeds[n]) for n in inputs)).numpy()
    got = session.run(None, {n: feeds[n] for n in inputs})[0]
    if got.shape != expected.shape:
        raise ModelImportError(
            f"{path.name} gives shape {got.shape}, PyTorch {expected.shape}; nothing was written"
        )
    return expected, float(np.max(np.abs(got - expected)))


def _fp16(stage: Path, role: str) -> VariantCheck:
    """ROLE.fp16.onnx (float32 inputs and outputs kept), measured against ROLE.onnx on fresh inputs."""
    fp32, target = stage / f"{role}.onnx", stage / f"{role}.fp16.onnx"
    write_fp16(fp32, target, external=role in _EXTERNAL)
    feeds = _random_feeds(fp32)
    worst, mean = compare(fp32, target, [feeds])
    log.info("variant_checked", graph=role, precision="fp16", max_abs_error=worst)
    return VariantCheck("fp16", target.name, worst, mean, graph=role)


def _random_feeds(path: Path) -> Feeds:
    """Batch-2 inputs in each graph's working range (the chained ones are gone with the torch models)."""
    rng = np.random.default_rng(3000)
    makers: dict[str, Callable[[tuple[int, ...]], np.ndarray]] = {
        "input_features": lambda _: features(2, seed=7),
        "image": lambda _: faces(1, seed=7),
        "latent": lambda shape: rng.normal(0, 1, shape),
        "audio": lambda shape: rng.normal(0, 1, shape),
    }
    feeds = {}
    for item in onnx.load(str(path), load_external_data=False).graph.input:
        shape = (2, *(d.dim_value for d in item.type.tensor_type.shape.dim[1:]))
        feeds[item.name] = makers[item.name](shape).astype(np.float32)
    return feeds


def features(count: int, seed: int = 0) -> np.ndarray:
    """(count, 80, 3000) Whisper log-mel of 30 s of speech-like audio, as transformers computes it."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(**{k: FEATURES[k] for k in FEATURES})
    rate = FEATURES["sampling_rate"]
    clips = [speech_like(FEATURES["chunk_length"], seed=seed + i, sr=rate) for i in range(count)]
    return np.asarray(extractor(clips, sampling_rate=rate, return_tensors="np").input_features, np.float32)


def faces(count: int, seed: int = 0) -> np.ndarray:
    """(2 x count, 3, 256, 256) RGB in [-1, 1]: `count` masked crops (lower half black), then full ones."""
    rng = np.random.default_rng(seed)
    photo = astronaut_bgr()
    crops = []
    for _ in range(count):
        side = rng.uniform(180, 240)
        x, y = (int(c + rng.uniform(-10, 10) - side / 2) for c in FACE_CENTRE)
        box = photo[max(y, 0) : int(y + side), max(x, 0) : int(x + side)]
        crops.append(cv2.resize(box, (FACE, FACE), interpolation=cv2.INTER_LANCZOS4)[:, :, ::-1] / 255.0)
    full = np.stack(crops).transpose(0, 3, 1, 2)
    masked = full.copy()
    masked[:, :, FACE // 2 :] = 0  # before normalising, as MuseTalk masks: these rows become -1
    return ((np.concatenate([masked, full]) - 0.5) / 0.5).astype(np.float32)


def _windows(hidden: np.ndarray) -> np.ndarray:
    """One (50, d) audio window per row of `hidden`, at different places in the clip."""
    rows = [
        window(torch.from_numpy(hidden[i : i + 1]), 100 + 37 * i * AUDIO_STEPS) for i in range(len(hidden))
    ]
    return torch.cat(rows).numpy()


def _spec(
    name: str, files: MuseTalkFiles, variants: tuple[VariantCheck, ...], checks: list[GraphCheck]
) -> ModelSpec:
    graphs = {c.role: {"fp32": c.file} for c in checks}
    for variant in variants:
        graphs[variant.graph][variant.precision] = variant.file
    notes = [f"MuseTalk {files.version}"]
    notes += [f"{c.role} fp32 ONNX vs PyTorch max abs {c.error:.1e}" for c in checks]
    notes += [f"{v.graph} fp16 vs fp32 max abs {v.max_abs_error:.1e}" for v in variants]
    return ModelSpec(
        name=name,
        kind="musetalk",
        onnx_file=graphs["unet"]["fp32"],
        source=files.folder.resolve().name,
        source_sha256=file_sha256(files.unet_weights),
        variants={p: f for p, f in graphs["unet"].items() if p != "fp32"},
        notes="; ".join(notes),
        graphs=graphs,
    )
