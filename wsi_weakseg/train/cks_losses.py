"""Losses of collaborative knowledge sharing (LACSS; ``../shared/papers/collaborative-knowledge-sharing-lacss.txt``).

Equation numbers are the paper's. Instances live in square windows (``(n, w, w)`` tensors) placed on a batch of
images by their top-left pixel (``origins``, ``(n, 2)`` row, col) and batch index; :func:`window_pixels` maps them
onto the images so that image-level maps (Eq. 4, 9) are scattered from them and image-level maps (``M_c``) are
gathered into them. Point positions are pixel-centre ``(row, col)`` coordinates (pixel ``k`` spans
``[k - 0.5, k + 0.5)``), as :class:`~wsi_weakseg.train.dataset.EvalItem` holds them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from torch.nn import functional as F

from ..model.lacss import gaussian_logit


def points_from_heatmap(heat: np.ndarray, min_value: float = 0.8) -> np.ndarray:
    """Point positions (pixel-centre row, col) from a Gaussian centre heatmap, to sub-pixel precision.

    Peaks are strict 3 x 3 maxima (ties broken by raster order) of at least ``min_value``; each is refined by a
    parabola through the logarithm of the heatmap along each axis, exact for a Gaussian bump. A click keeps its
    Gaussian through flips, rotations and zoom (bilinear resampling moves the peak by well under a pixel), so an
    augmented patch's heatmap gives its clicks back; ``min_value`` 0.8 keeps clicks inside the patch (within 0.71
    px of a pixel centre, >= 0.94 for sigma >= 2 px) and drops tails of clicks outside it.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:9, 0:9]
    >>> heat = np.exp(-((yy - 4.3) ** 2 + (xx - 2.0) ** 2) / 8)
    >>> np.round(points_from_heatmap(heat), 3).tolist()
    [[4.3, 2.0]]
    """
    h = np.asarray(heat, np.float64)
    rank = h + np.arange(h.size, 0, -1).reshape(h.shape) * 1e-12  # earlier raster position wins ties
    peaks = (rank == ndi.maximum_filter(rank, size=3, mode="constant", cval=-1.0)) & (h >= min_value)
    rows, cols = np.nonzero(peaks)
    if rows.size == 0:
        return np.zeros((0, 2))
    logh = np.log(np.maximum(np.pad(h, 1, mode="edge"), 1e-12))

    def refine(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        denom = a - 2 * b + c
        return np.where(denom < 0, 0.5 * (a - c) / np.where(denom < 0, denom, -1.0), 0.0).clip(-0.5, 0.5)

    r, c = rows + 1, cols + 1
    dy = refine(logh[r - 1, c], logh[r, c], logh[r + 1, c])
    dx = refine(logh[r, c - 1], logh[r, c], logh[r, c + 1])
    return np.stack([rows + dy, cols + dx], axis=1)


def detection_targets(points_rc: np.ndarray, shape: tuple[int, int], stride: int, smooth_px: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Detection targets on the ``stride`` grid (Eq. 3): positive cells and their offsets.

    Cell ``(i, j)`` covers pixels ``[s i, s (i + 1))`` (rows) and has its centre at continuous ``s (i + 0.5)``
    (a point at pixel-centre row ``r`` lies at continuous ``r + 0.5``). A cell is positive when it holds a point
    or its centre is within ``smooth_px`` of one (the paper's label smoothing); its offset target is the nearest
    such point's position from the cell centre, in cells.

    Returns
    -------
    positive : ndarray (H // s, W // s) float32
    offsets : ndarray (2, H // s, W // s) float32
        ``(dy, dx)`` where positive, 0 elsewhere.

    Examples
    --------
    >>> pos, off = detection_targets(np.array([[1.5, 2.5]]), (8, 8), 4, 0.0)
    >>> pos.tolist(), off[:, 0, 0].tolist()
    ([[1.0, 0.0], [0.0, 0.0]], [0.0, 0.25])
    """
    h, w = shape[0] // stride, shape[1] // stride
    positive = np.zeros((h, w), np.float32)
    offsets = np.zeros((2, h, w), np.float32)
    pts = np.asarray(points_rc, np.float64).reshape(-1, 2) + 0.5
    if len(pts) == 0:
        return positive, offsets
    centres = (np.stack(np.mgrid[0:h, 0:w], axis=-1).reshape(-1, 2) + 0.5) * stride
    dist, nearest = cKDTree(pts).query(centres)
    near = (dist <= smooth_px).reshape(h, w)
    cells = np.floor(pts / stride).astype(np.int64)
    inside = (cells[:, 0] >= 0) & (cells[:, 0] < h) & (cells[:, 1] >= 0) & (cells[:, 1] < w)
    owner = nearest.reshape(h, w).copy()
    owner[cells[inside, 0], cells[inside, 1]] = np.flatnonzero(inside)  # a cell holding a point regresses to it
    near[cells[inside, 0], cells[inside, 1]] = True
    positive[near] = 1.0
    delta = (pts[owner] - centres.reshape(h, w, 2)) / stride
    offsets[:, near] = np.moveaxis(delta, -1, 0)[:, near]
    return positive, offsets


def focal_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0,
              alpha: float = 0.25) -> torch.Tensor:
    """Focal binary cross-entropy (Lin et al. 2017) summed over ``mask`` and divided by the positives (at least 1)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    loss = a_t * (1 - p_t) ** gamma * ce * mask
    return loss.sum() / (target * mask).sum().clamp(min=1.0)


def offset_loss(pred: torch.Tensor, target: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """L2 of the offsets on positive cells: mean over them of the squared (dy, dx) error (0 without any)."""
    se = ((pred - target) ** 2).sum(dim=1) * positive
    return se.sum() / positive.sum().clamp(min=1.0)


def prior_logit(points_rc: torch.Tensor, origins: torch.Tensor, size: int, d_px: float) -> torch.Tensor:
    """``l_prior(d, y_i, x_i)`` of Eq. 4 on each window: the logit of a Gaussian of s.d. ``d_px`` at the point.

    Our reading of "a 2D Gaussian shape centred at y_i, x_i with a variance d^2", in the paper's notation where
    ``l(.)`` is a logit: ``logit(exp(-r^2 / (2 d^2)))``, clamped to ``[PRIOR_EPS, 1 - PRIOR_EPS]`` before the
    logit. It is positive within ``r ~ 1.18 d`` of the point and negative beyond, so with weight ``pi`` it pulls
    ``M_p`` towards a nucleus of the expected size on both sides.

    Parameters
    ----------
    points_rc : Tensor (n, 2)
        Point positions, pixel-centre coordinates of the image.
    origins : Tensor (n, 2)
        Top-left pixel of each window.
    size : int
        Window side (pixels).
    d_px : float
        ``d`` in pixels.

    Returns
    -------
    Tensor (n, size, size)
    """
    steps = torch.arange(size, dtype=points_rc.dtype, device=points_rc.device)
    dy = origins[:, 0, None].to(points_rc.dtype) + steps[None] - points_rc[:, 0, None]
    dx = origins[:, 1, None].to(points_rc.dtype) + steps[None] - points_rc[:, 1, None]
    return gaussian_logit(dy[:, :, None] ** 2 + dx[:, None, :] ** 2, d_px)


def window_pixels(batch: torch.Tensor, origins: torch.Tensor, size: int, shape: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into ``(B, H, W)`` images of every window pixel, and which of them lie inside the image.

    Returns
    -------
    index : Tensor (n, size, size) int64
        ``b * H * W + row * W + col`` (clamped into the image where outside).
    inside : Tensor (n, size, size) bool
    """
    H, W = shape
    steps = torch.arange(size, device=origins.device)
    rows = origins[:, 0, None] + steps[None]
    cols = origins[:, 1, None] + steps[None]
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    index = (batch[:, None, None] * (H * W) + rows.clamp(0, H - 1)[:, :, None] * W + cols.clamp(0, W - 1)[:, None, :])
    return index, inside


def paste(values: torch.Tensor, index: torch.Tensor, inside: torch.Tensor, shape: tuple[int, int, int],
          reduce: str) -> torch.Tensor:
    """Scatter window values onto ``(B, H, W)`` images: ``"amax"`` (0 where no window) or ``"sum"``."""
    flat = values.new_zeros(shape[0] * shape[1] * shape[2])
    v = torch.where(inside, values, torch.zeros_like(values))
    flat = flat.scatter_reduce(0, index.reshape(-1), v.reshape(-1), reduce=reduce, include_self=True)
    return flat.view(shape)


def instance_foreground(mask_logits: torch.Tensor, prior: torch.Tensor, pi: float, index: torch.Tensor,
                        inside: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Eq. 4: ``M_p = max_i sigmoid(l(m_i) + pi l_prior)`` on the images (0 where no window reaches)."""
    return paste(torch.sigmoid(mask_logits + pi * prior), index, inside, shape, "amax")


def linear_consistency(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean over ``mask`` of ``(1 - t) p + t (1 - p)``; its gradient in ``p`` is ``1 - 2 t`` (Eq. 7)."""
    m = mask.to(pred.dtype)
    return (((1 - target) * pred + target * (1 - pred)) * m).sum() / m.sum().clamp(min=1.0)


def balanced_linear_consistency(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 6 with each class weighted to half: ``(sum t (1 - p) / sum t + sum (1 - t) p / sum (1 - t)) / 2``.

    Sums over ``mask``; a soft target ``t`` counts ``t`` towards foreground and ``1 - t`` towards background. Ours
    (``cks.collaborator_balance``): with the plain mean, a collaborator that cannot yet tell nuclei from
    background is pulled to all-background by the ~80-95 % background of a crop, and the saturated sigmoid then
    stops it learning; balanced, a constant prediction has no gradient and only telling the classes apart pays.

    Examples
    --------
    >>> p = torch.tensor([0.9, 0.2, 0.4, 0.1]); t = torch.tensor([1.0, 0.0, 0.0, 0.0])
    >>> round(float(balanced_linear_consistency(p, t, torch.ones(4, dtype=torch.bool))), 4)  # (0.1 + 0.7 / 3) / 2
    0.1667
    """
    m = mask.to(pred.dtype)
    fg, bg = target * m, (1 - target) * m
    return 0.5 * ((fg * (1 - pred)).sum() / fg.sum().clamp(min=1e-6) + (bg * pred).sum() / bg.sum().clamp(min=1e-6))


def ce_consistency(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 5: cross-entropy of ``pred`` to the hard label ``target >= 0.5``, mean over ``mask`` (the ablation)."""
    hard = (target >= 0.5).to(pred.dtype)
    p = pred.clamp(eps, 1 - eps)
    m = mask.to(pred.dtype)
    return (-(hard * torch.log(p) + (1 - hard) * torch.log(1 - p)) * m).sum() / m.sum().clamp(min=1.0)


def share_loss(masks: torch.Tensor, collaborator: torch.Tensor, index: torch.Tensor, valid: torch.Tensor,
               shape: tuple[int, int, int], consistency: str = "linear", overlap_weight: float = 1.0,
               norm: float | None = None) -> torch.Tensor:
    """Eq. 8: each instance towards the collaborator's foreground, plus the overlap penalty, over ``K`` pixels.

    ``(1 / K) {sum_i [(1 - M_c) m_i + M_c (1 - m_i)] + sum_i m_i sum_{j != i} m_j}`` on the valid window pixels;
    ``K`` is ``norm`` (the recipe passes the image pixels that count, as ``H x W`` in Eq. 6) or, without it, the
    number of valid window pixels. ``consistency="ce"`` replaces the first sum by the cross-entropy to
    ``M_c >= 0.5`` (the paper's Table V ablation).

    Parameters
    ----------
    masks : Tensor (n, w, w)
        Instance probabilities ``m_i`` (with gradient).
    collaborator : Tensor (B, H, W)
        ``M_c`` (detached by the caller).
    index, valid : Tensor (n, w, w)
        :func:`window_pixels` and the pixels that count.
    overlap_weight : float
        Weight of the overlap penalty (1 in the paper; ours ramps it in, ``cks.overlap_ramp_epochs``).
    norm : float, optional
        ``K``; default the number of valid window pixels.
    """
    if masks.shape[0] == 0:
        return masks.sum() * 0.0
    mc = collaborator.reshape(-1)[index]
    total = paste(masks, index, valid, shape, "sum").reshape(-1)[index]  # sum_j m_j at each window pixel
    others = (total - masks) * masks
    if consistency == "ce":
        follow = ce_consistency(masks, mc, valid) * valid.sum()
    else:
        follow = (((1 - mc) * masks + mc * (1 - masks)) * valid).sum()
    k = valid.sum().clamp(min=1) if norm is None else max(float(norm), 1.0)
    return (follow + overlap_weight * (others * valid).sum()) / k


_SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def sobel_magnitude(masks: torch.Tensor) -> torch.Tensor:
    """``phi`` of Eq. 9: the Sobel gradient magnitude of each window (zero outside it), ``(n, w, w)``."""
    k = torch.stack([_SOBEL, _SOBEL.T]).to(masks)[:, None]
    g = F.conv2d(masks[:, None], k, padding=1)
    return torch.sqrt((g**2).sum(dim=1) + 1e-8)


def instance_borders(masks: torch.Tensor, index: torch.Tensor, inside: torch.Tensor,
                     shape: tuple[int, int, int]) -> torch.Tensor:
    """Eq. 9: ``B_p = tanh(sum_i phi(m_i))`` on the images."""
    return torch.tanh(paste(sobel_magnitude(masks), index, inside, shape, "sum"))


def border_loss(collaborator: torch.Tensor, principal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean squared difference of ``B_c`` and ``B_p`` over ``mask`` (it trains both models)."""
    m = mask.to(principal.dtype)
    return (((collaborator - principal) ** 2) * m).sum() / m.sum().clamp(min=1.0)


def collapse_loss(masks: torch.Tensor, valid: torch.Tensor, delta: float) -> torch.Tensor:
    """The anti-collapse term: ``delta / n sum_i 1 / mean(m_i)`` (means over each window's valid pixels)."""
    if masks.shape[0] == 0:
        return masks.sum() * 0.0
    v = valid.to(masks.dtype)
    mean = (masks * v).sum(dim=(1, 2)) / v.sum(dim=(1, 2)).clamp(min=1.0)
    return delta * (1.0 / mean.clamp(min=1e-6)).mean()


def edge_mask(shape: tuple[int, int], margin: int) -> np.ndarray:
    """True except within ``margin`` pixels of the border (where nuclei clicked outside the patch show)."""
    out = np.zeros(shape, bool)
    m = max(0, math.ceil(margin))
    out[m : shape[0] - m, m : shape[1] - m] = True
    return out
