"""A fixed, untrained hematoxylin baseline with an exactly bounded receptive field.

It maps an RGB tile to the same two maps as the trained network (nucleus foreground probability and a
nucleus-centre heatmap) by colour deconvolution (Ruifrok & Johnston's fixed H&E matrix, as in
``skimage.color.rgb2hed``), a Gaussian-smoothed hematoxylin threshold and a Gaussian blur of the
foreground. It has no parameters to learn and is not a trained model: it is the deterministic stub of the
tiling tests and a classical point of comparison (the default model is the trained ``nuclei-points-v2``).

Every operation is a table look-up or an element-wise multiply/add over array slices in a fixed order, so
each output pixel is bit-for-bit a function of the input pixels within :attr:`receptive_radius` of it,
whatever the tile size or position. Pixels closer than that to the tile border are set to 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# Ruifrok & Johnston H&E-DAB: hematoxylin column of the inverse stain matrix (skimage.color.hed_from_rgb).
_H_FROM_RGB = (1.87798274, -0.06590806, -0.60190736)


def _gaussian_taps(sigma: float) -> tuple[int, list[float]]:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return radius, [float(v) for v in (w / w.sum())]


def _blur_valid(x: torch.Tensor, taps: list[float], axis: int) -> torch.Tensor:
    """Separable 1-D filter over ``axis`` (valid part only), summed in a fixed order."""
    n = x.shape[axis] - len(taps) + 1
    acc = None
    for k, w in enumerate(taps):
        term = x.narrow(axis, k, n) * w
        acc = term if acc is None else acc + term
    return acc


class HematoxylinBaseline(nn.Module):
    """Untrained colour-deconvolution nucleus detector returning ``(N, 2, H, W)`` probabilities.

    Parameters
    ----------
    sigma_px : float
        Gaussian sigma (working pixels) smoothing the hematoxylin density.
    centre_sigma_px : float
        Gaussian sigma (working pixels) of the blur that turns the foreground into a centre heatmap.
    h_low, h_high : float
        Hematoxylin optical densities mapped to foreground probability 0 and 1 (linear ramp between).

    Notes
    -----
    Expects RGB scaled to [0, 1] (model-card normalisation mean 0, std 1). Outputs are probabilities,
    not logits (model-card ``activation: identity``).
    """

    def __init__(
        self, sigma_px: float = 1.0, centre_sigma_px: float = 3.0, h_low: float = 0.3, h_high: float = 0.5
    ) -> None:
        super().__init__()
        self.r1, self.taps1 = _gaussian_taps(sigma_px)
        self.r2, self.taps2 = _gaussian_taps(centre_sigma_px)
        self.h_low, self.h_high = float(h_low), float(h_high)
        od = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
        lut = np.stack([od * c for c in _H_FROM_RGB]).astype(np.float32)  # (3, 256)
        self.register_buffer("lut", torch.from_numpy(lut), persistent=False)

    @property
    def receptive_radius(self) -> int:
        """Distance (pixels) beyond which input pixels cannot influence an output pixel."""
        return self.r1 + self.r2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.round(x.float() * 255.0).clamp_(0, 255).long()
        h = self.lut[0][idx[:, 0]] + self.lut[1][idx[:, 1]]
        h = h + self.lut[2][idx[:, 2]]  # (N, H, W) hematoxylin optical density
        h = _blur_valid(_blur_valid(h, self.taps1, 1), self.taps1, 2)
        fg = ((h - self.h_low) * (1.0 / (self.h_high - self.h_low))).clamp(0.0, 1.0)
        centre = _blur_valid(_blur_valid(fg, self.taps2, 1), self.taps2, 2)
        n, hh, ww = x.shape[0], x.shape[2], x.shape[3]
        out = x.new_zeros((n, 2, hh, ww), dtype=torch.float32)
        r = self.r1 + self.r2
        out[:, 0, r : hh - r, r : ww - r] = fg[:, self.r2 : fg.shape[1] - self.r2, self.r2 : fg.shape[2] - self.r2]
        out[:, 1, r : hh - r, r : ww - r] = centre
        return out
