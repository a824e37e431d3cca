"""MuseTalk's three networks from the libraries' own classes, and the four modules exported to ONNX.

UNet: diffusers UNet2DConditionModel(**musetalk.json); VAE: diffusers AutoencoderKL; audio: the encoder
of transformers' WhisperModel. The wrappers hold what MuseTalk does around each call, so the
graphs need no MuseTalk code at run time: stacked hidden states, posterior mean x
scaling factor, positional encoding and timestep 0, decode of latent / scaling factor to [0, 1].
Imported only by the MuseTalk import (torch, diffusers, transformers: the `import` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from daemon.modelimport.checkpoint import load_strict
from daemon.modelimport.errors import ModelImportError
from daemon.modelimport.musetalk_files import AUDIO_WINDOW, MuseTalkFiles, read_weights

SCALING_FACTOR = 0.18215  # sd-vae-ft-mse; a config's own `scaling_factor` wins
# diffusers renamed the VAE attention's parameters (sd-vae-ft-mse was saved before that)
_OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def positional_encoding(length: int, width: int) -> torch.Tensor:
    """pe[p, 2k] = sin(p / 10000^(2k/width)), pe[p, 2k+1] = cos(same): MuseTalk's PositionalEncoding."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, -torch.arange(0, width, 2, dtype=torch.float64) / width)
    pe = torch.zeros(length, width, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * rate)
    pe[:, 1::2] = torch.cos(position * rate)
    return pe.float()


class AudioEncoder(nn.Module):
    """(B, 80, 3000) log-mel -> (B, 1500, layers + 1, d_model): embedding output and every layer's."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.encoder(input_features, output_hidden_states=True).hidden_states, dim=2)


class VaeEncoder(nn.Module):
    """(B, 3, 256, 256) RGB in [-1, 1] -> (B, 4, 32, 32): posterior mean x scaling factor (no sampling)."""

    def __init__(self, vae: nn.Module, scale: float) -> None:
        super().__init__()
        self.vae: Any = vae  # diffusers' AutoencoderKL
        self.scale = scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        latent: torch.Tensor = self.vae.encode(image).latent_dist.mean * self.scale
        return latent


class UNet(nn.Module):
    """(B, 8, 32, 32) latents and a (B, 50, 384) raw audio window -> (B, 4, 32, 32); one pass at t=0."""

    pe: torch.Tensor

    def __init__(self, unet: nn.Module, width: int) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("pe", positional_encoding(AUDIO_WINDOW, width))

    def forward(self, latent: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        predicted: torch.Tensor = self.unet(latent, 0, encoder_hidden_states=audio + self.pe).sample
        return predicted


class VaeDecoder(nn.Module):
    """(B, 4, 32, 32) as the UNet gives it -> (B, 3, 256, 256) RGB in [0, 1]."""

    def __init__(self, vae: nn.Module, scale: float) -> None:
        super().__init__()
        self.vae: Any = vae  # diffusers' AutoencoderKL
        self.scale = scale

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        image: torch.Tensor = (self.vae.decode(latent / self.scale).sample / 2 + 0.5).clamp(0, 1)
        return image


def load_unet(files: MuseTalkFiles) -> UNet:
    from diffusers import UNet2DConditionModel

    net = _build(
        lambda: UNet2DConditionModel.from_config(files.unet_config), files.unet_weights, "musetalk.json"
    )
    _load(
        net,
        read_weights(files.unet_weights, "MuseTalk UNet weights file"),
        files.unet_weights,
        "MuseTalk UNet",
    )
    return UNet(net, int(files.unet_config["cross_attention_dim"])).eval()


def load_vae(files: MuseTalkFiles) -> tuple[VaeEncoder, VaeDecoder]:
    from diffusers import AutoencoderKL

    vae = _build(lambda: AutoencoderKL.from_config(files.vae_config), files.vae_weights, "config.json")
    state = _renamed(read_weights(files.vae_weights, "sd-vae-ft-mse VAE weights file"))
    _load(vae, state, files.vae_weights, "sd-vae-ft-mse VAE (diffusers AutoencoderKL)")
    vae.eval()
    scale = float(files.vae_config.get("scaling_factor", SCALING_FACTOR))
    return VaeEncoder(vae, scale).eval(), VaeDecoder(vae, scale).eval()


def load_audio(files: MuseTalkFiles) -> AudioEncoder:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = _build(lambda: WhisperConfig(**files.whisper_config), files.whisper_weights, "config.json")
    config._attn_implementation = "eager"  # plain matmul + softmax: exports on every torch version
    encoder = WhisperEncoder(config)
    state = _encoder_part(read_weights(files.whisper_weights, "whisper-tiny weights file"))
    _load(encoder, state, files.whisper_weights, "whisper-tiny encoder")
    return AudioEncoder(encoder).eval()


def _load(net: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    try:
        load_strict(net, state, path, what)
    except ModelImportError as exc:
        raise ModelImportError(
            f"{exc}. Use the file from the MuseTalk release with the config beside it "
            "(download it again if it may be incomplete)"
        ) from exc


def _build(make: Any, weights: Path, config_name: str) -> Any:
    try:
        return make()
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelImportError(
            f"{weights.parent / config_name} describes a network the library cannot build ({exc}); "
            "use the config released with the weights"
        ) from exc


def _renamed(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old diffusers attention names -> current ones; 1x1 conv q/k/v weights -> linear ones."""
    out = {}
    for name, tensor in state.items():
        for old, new in _OLD_ATTENTION.items():
            if ".attentions." in name and old in name:
                name = name.replace(old, new)
                tensor = tensor[:, :, 0, 0] if tensor.dim() == 4 else tensor
        out[name] = tensor
    return out


def _encoder_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors from a whole WhisperForConditionalGeneration / WhisperModel file."""
    for prefix in ("model.encoder.", "encoder."):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if part:
            return part
    return dict(state)  # an encoder saved on its own: load_strict names whatever is missing


def window(hidden_states: torch.Tensor, start: int) -> torch.Tensor:
    """(B, T, 5, d) -> the (B, 50, d) window of 10 steps from `start`, time major, as the UNet takes it."""
    steps = AUDIO_WINDOW // hidden_states.shape[2]
    part = hidden_states[:, start : start + steps]
    return part.reshape(part.shape[0], -1, part.shape[-1])
