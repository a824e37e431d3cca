"""The S3FD face detector in torch, as the face_detection package (used by Wav2Lip) defines it.

VGG16 trunk, L2Norm on conv3_3 / conv4_3 / conv5_3, fc6/fc7 as convolutions, two extra stages, and six
detection heads (conf + loc each); the first head's 4 conf channels are "max-out" to 2 (background is
the max of the first three). Attribute names match `s3fd.pth`'s state_dict keys. Importer only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OUTPUTS = tuple(f"{kind}{i}" for i in range(1, 7) for kind in ("cls", "reg"))
HEADS = (  # (feature name, channels, conf channels)
    ("conv3_3_norm", 256, 4),
    ("conv4_3_norm", 512, 2),
    ("conv5_3_norm", 512, 2),
    ("fc7", 1024, 2),
    ("conv6_2", 512, 2),
    ("conv7_2", 256, 2),
)
_VGG = (  # (name, cin, cout) of the 3x3 convs, stage by stage; a 2x2 max-pool follows each stage
    (("conv1_1", 3, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)),
    (("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512)),
    (("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)),
)


class L2Norm(nn.Module):
    """Per-position L2 normalisation over channels, times a learned per-channel scale."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = 1e-10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


class S3FD(nn.Module):
    """forward(image (B, 3, H, W), RGB minus the mean) -> [cls1, reg1, ..., cls6, reg6]."""

    def __init__(self) -> None:
        super().__init__()
        for stage in _VGG:
            for name, cin, cout in stage:
                setattr(self, name, nn.Conv2d(cin, cout, 3, 1, 1))
        self.fc6 = nn.Conv2d(512, 1024, 3, 1, padding=3)  # padding 3, as in the reference weights
        self.fc7 = nn.Conv2d(1024, 1024, 1, 1, 0)
        self.conv6_1 = nn.Conv2d(1024, 256, 1, 1, 0)
        self.conv6_2 = nn.Conv2d(256, 512, 3, 2, 1)
        self.conv7_1 = nn.Conv2d(512, 128, 1, 1, 0)
        self.conv7_2 = nn.Conv2d(128, 256, 3, 2, 1)
        self.conv3_3_norm = L2Norm(256, 10)
        self.conv4_3_norm = L2Norm(512, 8)
        self.conv5_3_norm = L2Norm(512, 5)
        for feature, channels, conf in HEADS:
            setattr(self, f"{feature}_mbox_conf", nn.Conv2d(channels, conf, 3, 1, 1))
            setattr(self, f"{feature}_mbox_loc", nn.Conv2d(channels, 4, 3, 1, 1))

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, name)(x))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six maps the heads read, in HEADS order (the first three not yet normalised)."""
        taps = []
        for index, stage in enumerate(_VGG):
            for name, _, _ in stage:
                x = self._conv(name, x)
            if index >= 2:
                taps.append(x)  # conv3_3, conv4_3, conv5_3
            x = F.max_pool2d(x, 2, 2)
        x = self._conv("fc7", self._conv("fc6", x))
        taps.append(x)
        x = self._conv("conv6_2", self._conv("conv6_1", x))
        taps.append(x)
        taps.append(self._conv("conv7_2", self._conv("conv7_1", x)))
        return taps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = self.features(x)
        for i, norm in enumerate((self.conv3_3_norm, self.conv4_3_norm, self.conv5_3_norm)):
            taps[i] = norm(taps[i])
        outputs = []
        for (feature, _, _), tap in zip(HEADS, taps, strict=True):
            outputs += [getattr(self, f"{feature}_mbox_conf")(tap), getattr(self, f"{feature}_mbox_loc")(tap)]
        outputs[0] = _max_out_background(outputs[0])
        return outputs


def _max_out_background(cls: torch.Tensor) -> torch.Tensor:
    background = torch.max(torch.max(cls[:, 0:1], cls[:, 1:2]), cls[:, 2:3])
    return torch.cat([background, cls[:, 3:4]], dim=1)
