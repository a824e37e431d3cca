"""Finding and reading the released MuseTalk files in a folder, with errors that name file and key.

The layout users download (the names MuseTalk's own download script writes):

    musetalkV15/unet.pth + musetalkV15/musetalk.json        (v1.0: musetalk/pytorch_model.bin + musetalk.json)
    sd-vae/config.json + diffusion_pytorch_model.bin         (or .safetensors)
    whisper/config.json + pytorch_model.bin                  (or model.safetensors) + preprocessor_config.json

Only configs are read here (no torch): the cross-checks between them fail in seconds, before any
weights are loaded. Weights are read by `read_weights` (torch, safetensors) when the import runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.modelimport.errors import ModelImportError

# (folder, weights file, config file, version) in the order they are looked for
_UNETS = (
    ("musetalkV15", "unet.pth", "musetalk.json", "1.5"),
    ("musetalk", "pytorch_model.bin", "musetalk.json", "1.0"),
)
_VAE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_WHISPER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
AUDIO_WINDOW = 50  # audio tokens per frame: 10 whisper steps x 5 hidden states (time major)
AUDIO_STEPS = 10
# the Whisper features the daemon computes; the preprocessor config must agree
FEATURES = {"feature_size": 80, "sampling_rate": 16000, "n_fft": 400, "hop_length": 160, "chunk_length": 30}
FACE = 256  # face crop side; the VAE turns it into a FACE / 8 latent


@dataclass(frozen=True)
class MuseTalkFiles:
    """The files of one release, their configs read, and what they agree on."""

    folder: Path
    version: str  # "1.5" or "1.0"
    unet_weights: Path
    unet_config: dict[str, Any]
    vae_weights: Path
    vae_config: dict[str, Any]
    whisper_weights: Path
    whisper_config: dict[str, Any]
    preprocessor: dict[str, Any]

    @property
    def sources(self) -> tuple[Path, ...]:
        return (self.unet_weights, self.vae_weights, self.whisper_weights)


def is_musetalk_folder(path: Path) -> bool:
    """A folder holding any of the release's sub-folders (the rest is checked by `find_files`)."""
    names = {folder for folder, *_ in _UNETS} | {"sd-vae", "whisper"}
    return path.is_dir() and any((path / name).is_dir() for name in names)


def find_files(folder: Path) -> MuseTalkFiles:
    """Every file of the layout, configs read and checked; the first problem found is raised."""
    unet_dir, unet_name, unet_json, version = _unet_entry(folder)
    vae_dir, whisper_dir = folder / "sd-vae", folder / "whisper"
    files = MuseTalkFiles(
        folder=folder,
        version=version,
        unet_weights=_need(unet_dir / unet_name, "the MuseTalk UNet weights"),
        unet_config=read_json(unet_dir / unet_json, "the MuseTalk UNet config"),
        vae_weights=_first(vae_dir, _VAE_WEIGHTS, "the sd-vae-ft-mse VAE weights"),
        vae_config=read_json(vae_dir / "config.json", "the sd-vae-ft-mse VAE config"),
        whisper_weights=_first(whisper_dir, _WHISPER_WEIGHTS, "the whisper-tiny weights"),
        whisper_config=read_json(whisper_dir / "config.json", "the whisper-tiny config"),
        preprocessor=read_json(whisper_dir / "preprocessor_config.json", "the whisper-tiny feature settings"),
    )
    check_configs(files)
    return files


def _unet_entry(folder: Path) -> tuple[Path, str, str, str]:
    for name, weights, config, version in _UNETS:
        if (folder / name).is_dir():
            return folder / name, weights, config, version
    raise ModelImportError(
        f"{folder} has no musetalkV15/ folder (unet.pth + musetalk.json; v1.0: musetalk/pytorch_model.bin "
        "+ musetalk.json): copy the MuseTalk release's model folders there, beside sd-vae/ and whisper/"
    )


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelImportError(f"{path} is missing: it should hold {what}; copy it from the MuseTalk release")
    return path


def _first(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    wanted = " or ".join(names)
    raise ModelImportError(
        f"{folder} has no {wanted}: it should hold {what}; copy it from the MuseTalk release"
    )


def read_json(path: Path, what: str) -> dict[str, Any]:
    _need(path, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"{path} is not readable JSON ({exc}); it should hold {what}") from exc
    if not isinstance(data, dict):
        raise ModelImportError(
            f"{path} holds a JSON {type(data).__name__}, not an object; it should hold {what}"
        )
    return data


def key(config: dict[str, Any], name: str, path: Path) -> Any:
    """A config entry the import depends on; its absence is named with the file."""
    if name not in config:
        raise ModelImportError(
            f"{path} has no '{name}' key; use the file from the MuseTalk release (or add the key from it)"
        )
    return config[name]


def check_configs(files: MuseTalkFiles) -> None:
    """The three networks must fit together as MuseTalk joins them: latent channels, audio width."""
    unet_path = files.unet_weights.parent / "musetalk.json"
    vae_path = files.vae_weights.parent / "config.json"
    whisper_path = files.whisper_weights.parent / "config.json"
    latent = key(files.vae_config, "latent_channels", vae_path)
    _equal(
        unet_path,
        "in_channels",
        key(files.unet_config, "in_channels", unet_path),
        2 * latent,
        "twice the VAE's latent_channels",
    )
    _equal(
        unet_path,
        "out_channels",
        key(files.unet_config, "out_channels", unet_path),
        latent,
        "the VAE's latent_channels",
    )
    levels = len(key(files.vae_config, "block_out_channels", vae_path))
    _equal(
        vae_path,
        "block_out_channels",
        f"{levels} entries",
        "4 entries",
        f"a {FACE}x{FACE} face -> {FACE // 8}x{FACE // 8} latent",
    )
    width = key(files.whisper_config, "d_model", whisper_path)
    cross = key(files.unet_config, "cross_attention_dim", unet_path)
    _equal(unet_path, "cross_attention_dim", cross, width, "whisper's d_model")
    layers = key(files.whisper_config, "encoder_layers", whisper_path)
    _equal(whisper_path, "encoder_layers", layers, AUDIO_WINDOW // AUDIO_STEPS - 1, "whisper-tiny's")
    _equal(
        whisper_path,
        "num_mel_bins",
        key(files.whisper_config, "num_mel_bins", whisper_path),
        80,
        "whisper-tiny's",
    )
    positions = key(files.whisper_config, "max_source_positions", whisper_path)
    _equal(whisper_path, "max_source_positions", positions, 1500, "30 s at 50 steps/s")
    pre_path = files.whisper_weights.parent / "preprocessor_config.json"
    for name, value in FEATURES.items():
        _equal(pre_path, name, key(files.preprocessor, name, pre_path), value, "what lipsyncd computes")


def _equal(path: Path, name: str, found: object, expected: object, why: str) -> None:
    if found != expected:
        raise ModelImportError(
            f"{path}: '{name}' is {found}, expected {expected} ({why}); "
            "MuseTalk 1.5 uses sd-vae-ft-mse and whisper-tiny: use the files released with it"
        )


def read_weights(path: Path, what: str) -> dict[str, Any]:
    """Tensors by key from a .safetensors file or a PyTorch file (read safely, `module.` stripped)."""
    if path.suffix != ".safetensors":
        from daemon.modelimport.checkpoint import read_state_dict

        return read_state_dict(path, what)
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises its own error types for a damaged header or body
        raise ModelImportError(f"{path} is not a {what} (not a readable safetensors file: {exc})") from exc
