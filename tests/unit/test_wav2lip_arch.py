"""The torch Wav2Lip generator: parameter count, public checkpoint key names and shapes, BN folding."""

from __future__ import annotations

import torch
from torch import nn

from daemon.modelimport.torch_export import fold_batchnorm
from daemon.modelimport.wav2lip_arch import PARAMETERS, Wav2Lip, parameter_count

# (key, shape) pairs as they appear (after the `module.` prefix) in the public wav2lip.pth
PUBLIC_KEYS = {
    "face_encoder_blocks.0.0.conv_block.0.weight": (16, 6, 7, 7),
    "face_encoder_blocks.1.2.conv_block.1.running_var": (32,),
    "face_encoder_blocks.2.3.conv_block.0.weight": (64, 64, 3, 3),
    "face_encoder_blocks.6.1.conv_block.0.weight": (512, 512, 1, 1),
    "audio_encoder.0.conv_block.0.weight": (32, 1, 3, 3),
    "audio_encoder.3.conv_block.0.weight": (64, 32, 3, 3),
    "audio_encoder.12.conv_block.1.num_batches_tracked": (),
    "face_decoder_blocks.0.0.conv_block.0.weight": (512, 512, 1, 1),
    "face_decoder_blocks.1.0.conv_block.0.weight": (1024, 512, 3, 3),  # ConvTranspose: (in, out, k, k)
    "face_decoder_blocks.3.0.conv_block.0.weight": (768, 384, 3, 3),
    "face_decoder_blocks.6.2.conv_block.1.weight": (64,),
    "output_block.0.conv_block.0.weight": (32, 80, 3, 3),
    "output_block.1.weight": (3, 32, 1, 1),
    "output_block.1.bias": (3,),
}


def test_parameter_count_matches_design() -> None:
    assert parameter_count(Wav2Lip()) == PARAMETERS == 36_298_035


def test_state_dict_keys_match_the_public_checkpoint() -> None:
    state = Wav2Lip().state_dict()
    for key, shape in PUBLIC_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert max(int(k.split(".")[1]) for k in state if k.startswith("audio_encoder.")) == 12
    assert len({k.split(".")[1] for k in state if k.startswith("face_encoder_blocks.")}) == 7
    assert len({k.split(".")[1] for k in state if k.startswith("face_decoder_blocks.")}) == 7
    assert len(state) == 352


def test_forward_shapes_and_range() -> None:
    model = Wav2Lip().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0


def _random_bn(bn: nn.BatchNorm2d, gen: torch.Generator) -> None:
    with torch.no_grad():
        n = bn.num_features
        assert bn.running_mean is not None
        assert bn.running_var is not None
        bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=gen))
        bn.running_mean.copy_(torch.randn(n, generator=gen))
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.1)


def test_batchnorm_folding_keeps_the_output() -> None:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8)),
        nn.Sequential(nn.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1), nn.BatchNorm2d(4)),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            _random_bn(module, gen)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
