"""A minimal supervised fitting loop of the detect-and-segment principal, for tests and benchmarks.

Not a training recipe (that is :mod:`.cks_recipe`, from clicks): it fits a :class:`~wsi_weakseg.model.lacss.LacssNet`
to ground-truth instance masks (the paper's fully supervised setting, Sec. III-A: detection loss + cross-entropy
of each instance's window to its mask) on random crops, so a tiny net makes nucleus-like detections and masks in a
few seconds and the engine's oracles run on a real network rather than noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..model.lacss import LacssNet, window_cells
from .cks_losses import detection_targets, focal_bce, offset_loss, window_pixels
from .cks_recipe import Instances


def _centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids and centroids (pixel-centre row, col) of the instances of a label crop."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids, np.zeros((0, 2))
    rows, cols = np.nonzero(labels)
    lab = labels[rows, cols]
    count = np.bincount(lab, minlength=ids.max() + 1)[ids]
    cy = np.bincount(lab, weights=rows, minlength=ids.max() + 1)[ids] / count
    cx = np.bincount(lab, weights=cols, minlength=ids.max() + 1)[ids] / count
    return ids, np.stack([cy, cx], axis=1)


def fit_detect_segment(net: LacssNet, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       normalization: Mapping[str, Sequence[float]], window: int, steps: int = 80, crop: int = 96,
                       batch: int = 4, lr: float = 3e-3, seed: int = 0) -> LacssNet:
    """Fit ``net`` to instance label maps on random crops; the net in eval mode. Deterministic for a seed on CPU."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = torch.tensor(normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalization["std"]).view(1, 3, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        xs, labs = [], []
        for _ in range(batch):
            i = int(rng.integers(len(images)))
            y0 = int(rng.integers(0, images[i].shape[0] - crop + 1))
            x0 = int(rng.integers(0, images[i].shape[1] - crop + 1))
            xs.append(images[i][y0 : y0 + crop, x0 : x0 + crop])
            labs.append(labels[i][y0 : y0 + crop, x0 : x0 + crop])
        x = (torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        found = [_centroids(lab) for lab in labs]
        out = net(x)
        loss = torch.zeros(())
        for stride, det in zip(net.det_strides, out.detections):
            tg = [detection_targets(pts, (crop, crop), stride, 0.0) for _, pts in found]
            pos = torch.from_numpy(np.stack([t[0] for t in tg]))
            loss = loss + focal_bce(det[:, 0], pos, torch.ones_like(pos))
            loss = loss + offset_loss(det[:, 1:], torch.from_numpy(np.stack([t[1] for t in tg])), pos)
        inst = Instances.of([pts for _, pts in found], (crop, crop), window, torch.device("cpu"))
        if inst.batch.numel():
            logits = net.segment(out.features, inst.cells, window_cells(window))
            index, inside = window_pixels(inst.batch, inst.origins, window, (crop, crop))
            flat = torch.from_numpy(np.stack(labs).astype(np.int64)).reshape(-1)[index]
            ids = torch.from_numpy(np.concatenate([i for i, _ in found]))
            target = (flat == ids[:, None, None]).float()
            # nucleus pixels are ~1/10 of a window: weighted up so masks learn shapes within a few dozen steps
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=torch.tensor(5.0))
            loss = loss + (bce * inside).sum() / inside.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
