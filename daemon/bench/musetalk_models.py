"""Random-weight MuseTalk 1.5 releases for the benchmark, written with the libraries' own classes and
imported through daemon.modelimport as a user's download would be (nothing is downloaded).

"full": the real sizes (SD-1.5-sized UNet with MuseTalk's config, sd-vae-ft-mse, whisper-tiny): the
speed of the real graphs, whatever the weights. "tiny": the functional tests' narrow networks (the same
graph contract), for `--quick` and for the memory-vs-length runs, where only the pipeline matters.

Both are kept in bench/out/models/ (musetalk-full/, musetalk-tiny/): a rerun skips the generation and
the import (the full one takes many minutes and about 10 GB of memory). They are made in a child process
(`python -m daemon.bench.musetalk_models SIZE MODELS_DIR`) so torch's memory goes with it.
Needs the `import` extra (torch, diffusers, transformers).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon.render.modelspec import SPEC_NAME

UNET_FULL = {  # MuseTalk 1.5's musetalk.json
    "_class_name": "UNet2DConditionModel",
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
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
VAE_FULL = {  # sd-vae-ft-mse's config.json
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 256,
    "scaling_factor": 0.18215,
}
WHISPER_FULL: dict[str, Any] = {  # whisper-tiny's config.json (the decoder is not exported)
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "vocab_size": 51865,
    "pad_token_id": 50257,
    "bos_token_id": 50257,
    "eos_token_id": 50257,
    "decoder_start_token_id": 50258,
}
# the functional tests' tiny networks: every size of the graph contract kept, only inner widths shrunk
UNET_TINY = {**UNET_FULL, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}
VAE_TINY = {**VAE_FULL, "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1}
WHISPER_TINY: dict[str, Any] = {
    **WHISPER_FULL,
    "encoder_ffn_dim": 384,
    "decoder_layers": 1,
    "decoder_ffn_dim": 384,
    "max_target_positions": 32,
    "vocab_size": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}
CONFIGS = {"full": (UNET_FULL, VAE_FULL, WHISPER_FULL), "tiny": (UNET_TINY, VAE_TINY, WHISPER_TINY)}
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
REPORT = "import-report.json"  # beside model.json: what the import printed, and how long it took


def musetalk_model(models_dir: Path, size: str, timeout: float = 7200.0) -> Path:
    """models_dir/musetalk-SIZE, generated and imported on first use (in a child process)."""
    folder = models_dir / f"musetalk-{size}"
    if not (folder / SPEC_NAME).is_file():
        models_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "daemon.bench.musetalk_models", size, str(models_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0 or not (folder / SPEC_NAME).is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"making the {size} MuseTalk model in {folder} failed: " + " | ".join(tail))
    return folder


def import_report(folder: Path) -> dict[str, Any]:
    path = folder / REPORT
    return json.loads(path.read_text()) if path.is_file() else {}


def make(size: str, models_dir: Path) -> Path:
    """Write a random release under models_dir/.release-SIZE/MuseTalk, import it, drop the release."""
    from daemon.modelimport import import_model

    scratch = models_dir / f".release-{size}"
    release = scratch / "MuseTalk"  # the name model.json records as the source
    started = time.monotonic()
    write_release(size, release)
    written = time.monotonic()
    report = import_model(release, models_dir, name=f"musetalk-{size}", overwrite=True)
    imported = time.monotonic()
    summary = {
        "size": size,
        "generate_s": round(written - started, 1),
        "import_s": round(imported - written, 1),
        "graph_errors": dict(report.graph_errors),
        "files_mb": {p.name: round(p.stat().st_size / 1e6, 1) for p in report.files},
        "lines": report.lines(),
    }
    (report.folder / REPORT).write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(scratch)  # gigabytes only needed for the import
    return report.folder


def write_release(size: str, folder: Path) -> Path:
    """The release layout MuseTalk's download script leaves, with random weights (seeded)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    unet_config, vae_config, whisper_config = CONFIGS[size]
    for sub in ("musetalkV15", "sd-vae", "whisper"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with torch.no_grad():  # one network at a time: the full UNet alone is 3.4 GB of fp32
        unet = UNet2DConditionModel.from_config(unet_config)
        torch.save(unet.state_dict(), folder / "musetalkV15" / "unet.pth")
        del unet
        (folder / "musetalkV15" / "musetalk.json").write_text(json.dumps(unet_config))
        vae = AutoencoderKL.from_config(vae_config)
        for p in vae.parameters():  # random VAE weights give a flat posterior; widen it (as the tests do)
            p.mul_(1.5)
        torch.save(vae.state_dict(), folder / "sd-vae" / "diffusion_pytorch_model.bin")
        (folder / "sd-vae" / "config.json").write_text(json.dumps(vae_config))
        whisper = WhisperForConditionalGeneration(WhisperConfig(**whisper_config))
        state = {k: v.detach().clone().contiguous() for k, v in whisper.state_dict().items()}
        save_file(state, str(folder / "whisper" / "model.safetensors"))
        (folder / "whisper" / "config.json").write_text(whisper.config.to_json_string())
    (folder / "whisper" / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder


if __name__ == "__main__":
    print(make(sys.argv[1], Path(sys.argv[2])))
