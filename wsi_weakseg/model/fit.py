"""A minimal dense-target fitting loop, for tests and benchmarks that need a net whose maps look like nuclei.

Not a training recipe: no augmentation, validation or checkpoints (those belong to the training room). It fits
a network to per-pixel targets in [0, 1] with binary cross-entropy on random crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def fit_dense(
    net: nn.Module,
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    normalization: dict[str, list[float]],
    steps: int = 60,
    crop: int = 96,
    batch: int = 4,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Fit ``net`` to ``targets`` (each (K, H, W) float in [0, 1]) on random crops of ``images`` (uint8 RGB).

    Returns the network in eval mode. Deterministic for a given seed on CPU.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = torch.tensor(normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalization["std"]).view(1, 3, 1, 1)

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(batch):
            i = int(rng.integers(len(images)))
            y0 = int(rng.integers(0, images[i].shape[0] - crop + 1))
            x0 = int(rng.integers(0, images[i].shape[1] - crop + 1))
            xs.append(images[i][y0 : y0 + crop, x0 : x0 + crop])
            ys.append(targets[i][:, y0 : y0 + crop, x0 : x0 + crop])
        x = ((torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std).contiguous()  # see train.points_recipe.to_tensor
        return x, torch.from_numpy(np.stack(ys).astype(np.float32))

    head = getattr(net, "head", None)
    if isinstance(head, nn.Conv2d) and head.bias is not None:
        # Start each map at its prior (mean target) so the first steps learn shape, not the class balance.
        prior = np.clip([float(np.mean([t[k].mean() for t in targets])) for k in range(targets[0].shape[0])], 1e-3, 1 - 1e-3)
        with torch.no_grad():
            head.bias[: len(prior)] = torch.from_numpy(np.log(prior / (1 - prior))).float()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        x, y = sample()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x)[:, : y.shape[1]], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Running BatchNorm statistics lag far behind after a short fit; re-estimate them with the final
    # weights (cumulative average over fresh batches) so that eval mode matches what was fitted.
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for _ in range(max(8, steps // 4)):
            net(sample()[0])
    for m in bns:
        m.momentum = 0.1
    return net.eval()
