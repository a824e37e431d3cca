"""The Wav2Lip generator in torch, built from its published architecture.

Module names follow the public checkpoints so that `state_dict` keys match them one to one
(`face_encoder_blocks.1.0.conv_block.0.weight`, `audio_encoder.3.conv_block.1.running_mean`, ...).
Only the model importer imports this module: torch is never needed at render time.
"""

from __future__ import annotations

import torch
from torch import nn

MEL_SHAPE = (1, 80, 16)
FACE_SHAPE = (6, 96, 96)
PARAMETERS = 36_298_035  # the published Wav2Lip generator

Stride = int | tuple[int, int]


class Conv(nn.Module):
    """Conv2d + BatchNorm2d, then ReLU; a residual block adds its input before the ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: Stride = 1, padding: int = 1, residual: bool = False
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        y: torch.Tensor = self.act(out)
        return y


class ConvT(nn.Module):
    """ConvTranspose2d + BatchNorm2d, then ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, padding: int, output_padding: int = 0
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act(self.conv_block(x))
        return y


def _res(channels: int, count: int) -> list[nn.Module]:
    return [Conv(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


def _down(cin: int, cout: int, res: int) -> nn.Sequential:
    """A face-encoder stage: a stride-2 conv halving the size, then `res` residual blocks."""
    return nn.Sequential(Conv(cin, cout, 3, 2, 1), *_res(cout, res))


def _up(cin: int, cout: int, res: int) -> nn.Sequential:
    """A decoder stage: a stride-2 transposed conv doubling the size, then `res` residual blocks."""
    return nn.Sequential(ConvT(cin, cout, 3, 2, 1, output_padding=1), *_res(cout, res))


def face_encoder() -> nn.ModuleList:
    return nn.ModuleList(
        [
            nn.Sequential(Conv(6, 16, 7, 1, 3)),  # 96x96
            _down(16, 32, 2),  # 48
            _down(32, 64, 3),  # 24
            _down(64, 128, 2),  # 12
            _down(128, 256, 2),  # 6
            _down(256, 512, 1),  # 3
            nn.Sequential(Conv(512, 512, 3, 1, 0), Conv(512, 512, 1, 1, 0)),  # 1
        ]
    )


def audio_encoder() -> nn.Sequential:
    """(B, 1, 80, 16) -> (B, 512, 1, 1); flat, so its keys are audio_encoder.0 .. audio_encoder.12."""
    return nn.Sequential(
        Conv(1, 32, 3, 1, 1),
        *_res(32, 2),
        Conv(32, 64, 3, (3, 1), 1),  # 27x16
        *_res(64, 2),
        Conv(64, 128, 3, 3, 1),  # 9x6
        *_res(128, 2),
        Conv(128, 256, 3, (3, 2), 1),  # 3x3
        *_res(256, 1),
        Conv(256, 512, 3, 1, 0),  # 1x1
        Conv(512, 512, 1, 1, 0),
    )


def face_decoder() -> nn.ModuleList:
    return nn.ModuleList(
        [
            nn.Sequential(Conv(512, 512, 1, 1, 0)),  # 1x1
            nn.Sequential(ConvT(1024, 512, 3, 1, 0), *_res(512, 1)),  # 3
            _up(1024, 512, 2),  # 6
            _up(768, 384, 2),  # 12
            _up(512, 256, 2),  # 24
            _up(320, 128, 2),  # 48
            _up(160, 64, 2),  # 96
        ]
    )


class Wav2Lip(nn.Module):
    """forward(mel (B,1,80,16), face (B,6,96,96)) -> image (B,3,96,96) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = face_encoder()
        self.audio_encoder = audio_encoder()
        self.face_decoder_blocks = face_decoder()
        self.output_block = nn.Sequential(Conv(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        feats = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        x = self.audio_encoder(mel)
        for block in self.face_decoder_blocks:
            # each decoder output meets the deepest encoder output not used yet
            x = torch.cat((block(x), feats.pop()), dim=1)
        y: torch.Tensor = self.output_block(x)
        return y


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
