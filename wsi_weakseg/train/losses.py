"""Losses and schedules of the points recipe (Sec. II of points-cotraining-colorization-scnet).

Labels use the encoding of :mod:`wsi_weakseg.weak`: 0 background, 1 nucleus, 2 ignored.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

IGNORE = 2


def ramp_weights(epoch: int, n_epochs: int, eta: float, epsilon: float) -> tuple[float, float]:
    """Cumulative-learning weights: co-training ``eta (N/Nmax)^2`` rises, colorization ``eps (1 - N/Nmax)^2`` falls.

    Examples
    --------
    >>> ramp_weights(0, 60, 1.0, 0.1)
    (0.0, 0.1)
    >>> ramp_weights(30, 60, 1.0, 0.1)
    (0.25, 0.025)
    """
    r = min(max(epoch / n_epochs, 0.0), 1.0)
    return eta * r * r, epsilon * (1.0 - r) ** 2


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over non-ignored pixels (Eq. 3-4); 0 when every pixel is ignored.

    ``labels`` holds 0/1/2 (2 = ignored), same shape as ``logits``.
    """
    mask = labels != IGNORE
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask], labels[mask].float())


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is non-zero; 0 (with a gradient path) when the mask is empty.

    Examples
    --------
    >>> float(masked_mean(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([1, 1, 0])))
    2.0
    """
    m = mask != 0
    if not bool(m.any()):
        return values.sum() * 0.0
    return values[m].mean()


def pseudo_target(cluster: torch.Tensor, ema: torch.Tensor) -> torch.Tensor:
    """Eq. 6: the cluster label where it is decided (0 or 1), the other net's EMA probability where ignored."""
    return torch.where(cluster == IGNORE, ema, cluster.float())


def binary_kl(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 7 for a two-class map: mean over pixels of KL(p || y), p the target and y = sigmoid(logits).

    Examples
    --------
    >>> x = torch.tensor([0.0]); float(binary_kl(x, torch.tensor([0.5])))
    0.0
    """
    p = target.clamp(eps, 1 - eps)
    log_y = F.logsigmoid(logits)
    log_1my = F.logsigmoid(-logits)
    kl = p * (torch.log(p) - log_y) + (1 - p) * (torch.log(1 - p) - log_1my)
    return kl.mean()


def ema_update(previous: torch.Tensor | None, prediction: torch.Tensor, weight: float) -> torch.Tensor:
    """Eq. 5: ``p_n = w * y + (1 - w) * p_{n-1}`` (the first prediction starts the average)."""
    if previous is None:
        return prediction.clone()
    return weight * prediction + (1.0 - weight) * previous


def colorization_loss(rgb_pred: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Eq. 8: mean squared error between the reconstructed and the true H&E image (both in [0, 1])."""
    return F.mse_loss(rgb_pred, rgb)


def _half_window(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of a (2r+1)² window with one of each ``±`` pair: dy > 0, or dy == 0 and dx > 0."""
    return [(dy, dx) for dy in range(0, radius + 1) for dx in range(-radius, radius + 1) if dy > 0 or dx > 0]


def pairwise_crf_loss(prob: torch.Tensor, rgb: torch.Tensor, radius: int, sigma_xy: float, sigma_rgb: float) -> torch.Tensor:
    """Relaxed Potts energy with a bilateral kernel (Tang et al. 2018 "On regularized losses"; Obukhov et al. 2019).

    ``sum over ordered pairs (i, j) within a (2r+1)² window, i != j, of w_ij [s_i (1 - s_j) + s_j (1 - s_i)]``
    divided by the number of pixels, with ``w_ij = exp(-|x_i - x_j|² / 2 sigma_xy² - |c_i - c_j|² / 2 sigma_rgb²)``.
    It charges a label change between neighbours of similar colour and is cheap where colour changes, so
    the foreground boundary moves to colour edges, where the point labels say nothing (pixels the Voronoi
    and cluster labels ignore). Pairs reaching outside the patch are not counted.

    Parameters
    ----------
    prob : (N, H, W) tensor
        Foreground probability in [0, 1].
    rgb : (N, 3, H, W) tensor
        Colour the kernel compares, in [0, 1].
    radius : int
        Half window in pixels (``radius`` 2: 24 neighbours).
    sigma_xy, sigma_rgb : float
        Kernel widths in pixels and in [0, 1] colour units.

    Examples
    --------
    Two pixels of one colour, one sure foreground, one sure background: both ordered pairs cost 1 x w, w =
    exp(-1 / 2) for unit spacing and sigma_xy 1, over 2 pixels.

    >>> p = torch.tensor([[[1.0, 0.0]]]); c = torch.zeros(1, 3, 1, 2)
    >>> round(float(pairwise_crf_loss(p, c, 1, 1.0, 0.1)), 6) == round(math.exp(-0.5), 6)
    True
    """
    n, h, w = prob.shape
    total = prob.new_zeros(())
    for dy, dx in _half_window(radius):
        if dy >= h or abs(dx) >= w:
            continue
        ys, xs = slice(0, h - dy), slice(max(0, -dx), w - max(0, dx))
        yt, xt = slice(dy, h), slice(max(0, dx), w - max(0, -dx))
        s, t = prob[:, ys, xs], prob[:, yt, xt]
        colour = ((rgb[:, :, ys, xs] - rgb[:, :, yt, xt]) ** 2).sum(1)
        weight = torch.exp(-colour / (2 * sigma_rgb**2)) * math.exp(-(dy * dy + dx * dx) / (2 * sigma_xy**2))
        total = total + 2 * (weight * (s * (1 - t) + t * (1 - s))).sum()
    return total / (n * h * w)


# --- Scribble2Label (Lee et al., MICCAI 2020; /work/shared/papers/scribble2label.txt) -------------------------
# Scribble labels use the same encoding (0 background stroke, 1 nucleus stroke, 2 unscribbled), so the scribbled
# loss is the masked BCE above; the prediction ensemble is :func:`ema_update` (y_n = a f(x) + (1 - a) y_{n-1}).


def partial_ce(logits: torch.Tensor, scribble_labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1 (L_sp): binary cross-entropy averaged over the scribbled pixels Omega_s; 0 when there are none.

    Examples
    --------
    Logit 0 on a scribbled pixel costs ln 2, the unscribbled pixel (2) nothing:

    >>> round(float(partial_ce(torch.tensor([0.0, 5.0]), torch.tensor([1, 2]))), 6) == round(math.log(2), 6)
    True
    """
    return masked_bce(logits, scribble_labels)


def pseudo_labels(ema: torch.Tensor, scribble_labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Omega_g of Eq. 2: 1 where ``ema > tau``, 0 where ``1 - ema > tau``, else 2 (ignored); scribbled pixels 2.

    Parameters
    ----------
    ema : tensor
        Ensemble foreground probability y_n in [0, 1].
    scribble_labels : tensor
        0/1/2 scribble map of the same shape (pixels != 2 are in Omega_s and left to L_sp).
    tau : float
        Consistency threshold (paper default 0.8), in [0.5, 1).

    Returns
    -------
    tensor of int64
        Target map in the weak encoding.
    """
    target = torch.full_like(ema, IGNORE, dtype=torch.int64)
    target[ema > tau] = 1
    target[(1.0 - ema) > tau] = 0
    target[scribble_labels != IGNORE] = IGNORE
    return target


def unlabelled_ce(logits: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (L_up): binary cross-entropy to the one-hot pseudo labels, averaged over Omega_g; 0 when empty."""
    return masked_bce(logits, pseudo)


def scribble_loss(logits: torch.Tensor, scribble_labels: torch.Tensor, pseudo: torch.Tensor | None,
                  lam: float) -> torch.Tensor:
    """Eq. 3: ``L_sp + lam * L_up`` (L_sp alone during warm-up, when ``pseudo`` is None)."""
    loss = partial_ce(logits, scribble_labels)
    if pseudo is not None:
        loss = loss + lam * unlabelled_ce(logits, pseudo)
    return loss
