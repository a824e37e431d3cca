"""Importing a MuseTalk release folder: four ONNX graphs that match the networks they came from.

The release is random but laid out and saved as the real one: tiny configurations of the same library
classes (diffusers UNet2DConditionModel and AutoencoderKL, transformers Whisper), torch.save'd state
dicts, the VAE under diffusers' old attention names as sd-vae-ft-mse ships them, Whisper as a whole
WhisperForConditionalGeneration in model.safetensors. The tiny configs keep every size of the graph
contract (d_model 384, 4 encoder layers -> 5 hidden states, 1500 positions, 80 mels, 8 -> 4 latent
channels, 256 -> 32): only widths inside the networks shrink. The graphs are checked here against
torch computations written from MuseTalk's published recipe (own positional encoding and scaling), not the
importer's wrappers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import WhisperConfig, WhisperForConditionalGeneration

from daemon.modelimport import ModelImportError, import_model
from daemon.modelimport.musetalk_arch import load_vae
from daemon.modelimport.musetalk_files import find_files
from daemon.render.modelspec import ModelSpec
from daemon.render.musetalk import MuseTalkModel
from daemon.render.registry import ModelPool, available_models
from tests.e2e.harness import Share

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": [32, 64, 64, 64],  # 1.5: [320, 640, 1280, 1280]
    "layers_per_block": 1,  # 1.5: 2
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 384,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "act_fn": "silu",
    "sample_size": 64,
}
VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [32, 32, 32, 32],  # sd-vae-ft-mse: [128, 256, 512, 512]
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 1,  # sd-vae-ft-mse: 2
    "norm_num_groups": 32,
    "sample_size": 256,
}
# whisper-tiny's sizes where the graphs show them; narrower feed-forward, tiny decoder
WHISPER_CONFIG: dict[str, Any] = {
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 384,  # tiny: 1536
    "decoder_layers": 1,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 384,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 32,
    "vocab_size": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}
PREPROCESSOR = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 80,
    "sampling_rate": 16000,
    "n_fft": 400,
    "hop_length": 160,
    "chunk_length": 30,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
}
SCALE = 0.18215
_OLD_NAMES = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


class Nets:
    """The torch networks the release was written from."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.unet = UNet2DConditionModel.from_config(UNET_CONFIG).eval()
        self.vae = AutoencoderKL.from_config(VAE_CONFIG).eval()
        with torch.no_grad():  # random VAE weights give a flat posterior; widen it so checks see signal
            for p in self.vae.parameters():
                p.mul_(1.5)
        whisper = WhisperConfig(**WHISPER_CONFIG)
        whisper._attn_implementation = "eager"
        self.whisper = WhisperForConditionalGeneration(whisper).eval()


def write_release(nets: Nets, folder: Path) -> Path:
    for sub in ("musetalkV15", "sd-vae", "whisper"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    torch.save(nets.unet.state_dict(), folder / "musetalkV15" / "unet.pth")
    (folder / "musetalkV15" / "musetalk.json").write_text(json.dumps(UNET_CONFIG))
    torch.save(_old_attention_names(nets.vae.state_dict()), folder / "sd-vae" / "diffusion_pytorch_model.bin")
    (folder / "sd-vae" / "config.json").write_text(json.dumps({**VAE_CONFIG, "scaling_factor": SCALE}))
    whisper = {k: v.detach().clone().contiguous() for k, v in nets.whisper.state_dict().items()}
    save_file(whisper, str(folder / "whisper" / "model.safetensors"))
    (folder / "whisper" / "config.json").write_text(nets.whisper.config.to_json_string())
    (folder / "whisper" / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder


def _old_attention_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        for new, old in _OLD_NAMES.items():
            if ".attentions." in name:
                name = name.replace(new, old)
        out[name] = tensor
    return out


@pytest.fixture(scope="module")
def nets() -> Nets:
    return Nets()


@pytest.fixture(scope="module")
def release(nets: Nets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release(nets, tmp_path_factory.mktemp("release") / "MuseTalk")


@pytest.fixture(scope="module")
def imported(release: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Share, str]:
    """`lipsyncd model import DIR --name mt --fp16` as a user runs it; its output."""
    share = Share(tmp_path_factory.mktemp("share") / "shared")
    started = time.monotonic()
    result = share.lipsyncd("model", "import", str(release), "--name", "mt", "--fp16", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nmusetalk tiny import with --fp16: {time.monotonic() - started:.1f} s (CLI, incl. start)")
    print(result.stdout)
    return share, result.stdout


def _models(share: Share) -> Path:
    return share.root.parent / f"{share.root.name}-models"


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, feeds)[0]
    return out


def test_cli_writes_four_graphs_their_errors_and_the_spec(imported: tuple[Share, str]) -> None:
    share, output = imported
    folder = _models(share) / "mt"
    spec = ModelSpec.load(folder)
    roles = ("audio_encoder", "vae_encoder", "unet", "vae_decoder")
    assert spec.kind == "musetalk"
    assert set(spec.graphs) == set(roles)
    assert spec.variants == {"fp16": "unet.fp16.onnx"}
    assert spec.onnx_file == "unet.onnx"
    for role in roles:
        assert spec.graph_path(folder, role).is_file()
        assert spec.graph_path(folder, role, "fp16").is_file()
        assert f"{role}.onnx vs PyTorch: max abs difference" in output
        assert f"{role} fp16 vs fp32: max abs error" in output
    assert (folder / "unet.onnx.data").is_file()
    assert (folder / "unet.fp16.onnx.data").is_file()
    # the weights live in the external data (the real fp32 UNet is over 2 GB: one file cannot hold it)
    assert (folder / "unet.onnx.data").stat().st_size > 10 * (folder / "unet.onnx").stat().st_size
    for line in output.splitlines():
        if "vs PyTorch: max abs difference" in line:
            assert float(line.rsplit(" ", 1)[1]) <= 1e-3
    assert not [p for p in _models(share).iterdir() if p.name.startswith(".")]  # no staging left
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    print("\n".join(f"{name}: {size / 1e6:.2f} MB" for name, size in sizes.items()))


def test_model_list_shows_kind_and_variants(imported: tuple[Share, str]) -> None:
    share, _ = imported
    listed = share.lipsyncd("model", "list").stdout
    line = next(row for row in listed.splitlines() if row.startswith("mt "))
    assert line.split()[1:4] == ["musetalk", "fp32,fp16", "from"]
    assert "MuseTalk" in line


@torch.no_grad()
def test_graphs_match_the_networks_by_the_contract(imported: tuple[Share, str], nets: Nets) -> None:
    folder = _models(imported[0]) / "mt"
    rng = np.random.default_rng(5)
    batch = 2  # exported with batch 1: the batch is dynamic

    mel = rng.uniform(-1, 1.5, (batch, 80, 3000)).astype(np.float32)
    hidden = _run(folder / "audio_encoder.onnx", {"input_features": mel})
    assert hidden.shape == (batch, 1500, 5, 384)
    assert np.abs(hidden - whisper_states(nets, mel)).max() <= 1e-3

    image = rng.uniform(-1, 1, (batch, 3, 256, 256)).astype(np.float32)
    mean = nets.vae.encode(torch.from_numpy(image)).latent_dist.mean * SCALE
    latent = _run(folder / "vae_encoder.onnx", {"image": image})
    assert latent.shape == (batch, 4, 32, 32)
    assert np.abs(latent - mean.numpy()).max() <= 1e-3

    audio = rng.normal(0, 1, (batch, 50, 384)).astype(np.float32)
    both = rng.normal(0, 1, (batch, 8, 32, 32)).astype(np.float32)
    p, k = np.arange(50)[:, None], np.arange(0, 384, 2)[None, :]
    pe = np.zeros((50, 384))
    pe[:, 0::2], pe[:, 1::2] = np.sin(p / 10000 ** (k / 384)), np.cos(p / 10000 ** (k / 384))
    cond = torch.from_numpy((audio + pe).astype(np.float32))
    want = nets.unet(torch.from_numpy(both), torch.zeros(batch), encoder_hidden_states=cond).sample
    got = _run(folder / "unet.onnx", {"latent": both, "audio": audio})
    assert got.shape == (batch, 4, 32, 32)
    assert np.abs(got - want.numpy()).max() <= 1e-3

    decoded = (nets.vae.decode(torch.from_numpy(latent) / SCALE).sample / 2 + 0.5).clamp(0, 1)
    picture = _run(folder / "vae_decoder.onnx", {"latent": latent})
    assert picture.shape == (batch, 3, 256, 256)
    assert picture.min() >= 0
    assert picture.max() <= 1
    assert np.abs(picture - decoded.numpy()).max() <= 1e-3


def whisper_states(nets: Nets, mel: np.ndarray) -> np.ndarray:
    """Embedding output, then each encoder layer's, the last one after the final layer norm: (B, T, 5, d)."""
    encoder = nets.whisper.model.encoder
    x = F.gelu(encoder.conv1(torch.from_numpy(mel)))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1) + encoder.embed_positions.weight
    states = [x]
    for layer in encoder.layers:
        out = layer(states[-1], None)
        states.append(out[0] if isinstance(out, tuple) else out)
    states[-1] = encoder.layer_norm(states[-1])
    return torch.stack(states, 2).numpy()


def test_fp16_graphs_keep_float32_inputs_and_outputs(imported: tuple[Share, str]) -> None:
    folder = _models(imported[0]) / "mt"
    session = ort.InferenceSession(str(folder / "unet.fp16.onnx"), providers=["CPUExecutionProvider"])
    assert {i.type for i in session.get_inputs()} == {"tensor(float)"}
    out = session.run(
        None, {"latent": np.zeros((2, 8, 32, 32), np.float32), "audio": np.zeros((2, 50, 384), np.float32)}
    )
    assert out[0].dtype == np.float32
    assert out[0].shape == (2, 4, 32, 32)


def test_registry_lists_it_and_opens_its_graphs(imported: tuple[Share, str]) -> None:
    models = _models(imported[0])
    assert "mt" in available_models(models)
    pool = ModelPool(models, providers="cpu", precision="fp16", threads=1)
    model = pool.get("mt")
    assert isinstance(model, MuseTalkModel)
    assert model.provider == "CPUExecutionProvider"
    assert pool.get("mt") is model  # opened once


# -- broken releases: each problem named in plain words, nothing written -------------------------------


def _broken(release: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    for src in release.rglob("*"):
        if src.is_file():
            (copy / src.relative_to(release)).parent.mkdir(parents=True, exist_ok=True)
            (copy / src.relative_to(release)).symlink_to(src)
    return copy


def _refused(folder: Path, tmp_path: Path) -> str:
    models = tmp_path / "models"
    with pytest.raises(ModelImportError) as caught:
        import_model(folder, models, name="broken")
    assert not models.exists() or not list(models.iterdir())  # no model, no staging folder left
    return str(caught.value)


def test_missing_file_is_named(release: Path, tmp_path: Path) -> None:
    folder = _broken(release, tmp_path)
    (folder / "whisper" / "preprocessor_config.json").unlink()
    message = _refused(folder, tmp_path)
    assert "whisper/preprocessor_config.json is missing" in message
    assert "MuseTalk release" in message


def test_missing_config_key_is_named(release: Path, tmp_path: Path) -> None:
    folder = _broken(release, tmp_path)
    config = {k: v for k, v in UNET_CONFIG.items() if k != "cross_attention_dim"}
    (folder / "musetalkV15" / "musetalk.json").unlink()
    (folder / "musetalkV15" / "musetalk.json").write_text(json.dumps(config))
    assert "musetalk.json has no 'cross_attention_dim' key" in _refused(folder, tmp_path)


def test_missing_and_misshaped_tensors_are_named(release: Path, nets: Nets, tmp_path: Path) -> None:
    folder = _broken(release, tmp_path)
    state = dict(nets.unet.state_dict())
    del state["conv_in.weight"]
    state["conv_out.weight"] = torch.zeros(4, 32, 3, 1)
    (folder / "musetalkV15" / "unet.pth").unlink()
    torch.save(state, folder / "musetalkV15" / "unet.pth")
    message = _refused(folder, tmp_path)
    assert "unet.pth does not match the MuseTalk UNet architecture" in message
    assert "missing keys: conv_in.weight" in message
    assert "conv_out.weight is (4, 32, 3, 1), expected (4, 32, 3, 3)" in message


def test_a_folder_that_is_not_a_release(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    message = _refused(tmp_path / "stuff", tmp_path)
    assert "not a MuseTalk release" in message


def test_v10_layout_and_safetensors_vae_are_found(release: Path, nets: Nets, tmp_path: Path) -> None:
    folder = _broken(release, tmp_path)
    (folder / "musetalkV15").rename(folder / "musetalk")
    (folder / "musetalk" / "unet.pth").rename(folder / "musetalk" / "pytorch_model.bin")
    (folder / "sd-vae" / "diffusion_pytorch_model.bin").unlink()
    state = {k: v.contiguous() for k, v in nets.vae.state_dict().items()}  # today's attention names
    save_file(state, str(folder / "sd-vae" / "diffusion_pytorch_model.safetensors"))
    files = find_files(folder)
    assert files.version == "1.0"
    assert files.unet_weights.name == "pytorch_model.bin"
    encoder, _ = load_vae(files)
    assert torch.equal(encoder.vae.state_dict()["encoder.conv_in.weight"], state["encoder.conv_in.weight"])
