"""The collaborator of collaborative knowledge sharing (Sec. III-B): two deliberately weak pixel-level nets.

Used only in training and discarded afterwards. ``M_c`` (foreground) comes from a shallow U-Net, 16, 32 and 64
channels at three scales (two downscalings); ``B_c`` (borders) from a three-layer CNN of 32 channels. The paper
keeps them this small on purpose: a more capable collaborator regularises less (its Table VII).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class ShallowUNet(nn.Module):
    """U-Net with two 2x downscalings and ``channels`` (16, 32, 64) at its three scales; one logit map out."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), in_channels: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1, self.down2, self.bottom = _double_conv(in_channels, c1), _double_conv(c1, c2), _double_conv(c2, c3)
        self.up2, self.up1 = _double_conv(c3 + c2, c2), _double_conv(c2 + c1, c1)
        self.out = nn.Conv2d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W), H and W multiples of 4 -> (N, H, W) logits."""
        a = self.down1(x)
        b = self.down2(F.max_pool2d(a, 2))
        c = self.bottom(F.max_pool2d(b, 2))
        b = self.up2(torch.cat([F.interpolate(c, scale_factor=2.0, mode="nearest"), b], dim=1))
        a = self.up1(torch.cat([F.interpolate(b, scale_factor=2.0, mode="nearest"), a], dim=1))
        return self.out(a)[:, 0]


class BorderCNN(nn.Module):
    """Three 3x3 conv-ReLU layers of ``channels`` and a 1x1 conv to one logit map."""

    def __init__(self, channels: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(3):
            layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.ReLU(inplace=True)]
            cin = channels
        layers.append(nn.Conv2d(cin, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, H, W) logits."""
        return self.body(x)[:, 0]
