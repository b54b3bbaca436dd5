"""Losses of the few-masks recipe: cross-patch dense contrast, consistency, entropy, and the mean teacher.

Wu et al., "Cross-patch Dense Contrastive Learning for Semi-supervised Segmentation of Cellular Nuclei in
Histopathologic Images" (CVPR 2022; ``../shared/papers/cross-patch-dense-contrastive-cdcl.txt``), implemented
from the paper's text. Equation numbers are the paper's.

Foreground is one logit per pixel here (sigmoid), so the paper's two-class ``argmax`` is ``p > 0.5`` (logit > 0)
and its two-class cross-entropy the binary one.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import nn
from torch.nn import functional as F

#: Patch classes of :func:`patch_classes`.
FDP, BDP, MIXED = 1, 0, -1


def gaussian_ramp(epoch: int, start: int | None, length: int) -> float:
    """The weight ramp of ``w_cons``: 0 before ``start``, then ``exp(-5 (1 - t)^2)``, ``t = (epoch - start) / length``.

    The "Gaussian curve" from 0 to 1 of the mean-teacher literature (Laine & Aila 2017); ``t`` is clipped to 1,
    so the weight is 1 from ``start + length`` on. ``start=None`` (no unsupervised branch) gives 0.

    Examples
    --------
    >>> gaussian_ramp(4, 5, 10), round(gaussian_ramp(5, 5, 10), 4), gaussian_ramp(15, 5, 10)
    (0.0, 0.0067, 1.0)
    """
    if start is None or epoch < start:
        return 0.0
    t = min(1.0, (epoch - start) / max(length, 1))
    return math.exp(-5.0 * (1.0 - t) ** 2)


def ema_alpha(step: int, alpha: float) -> float:
    """The EMA weight at optimiser step ``step`` (0-based): ``min(1 - 1 / (step + 1), alpha)``.

    Eq. 2 with the warm-up of Tarvainen & Valpola's mean-teacher code: the teacher copies the student at the
    first step and averages over the steps so far until ``1 / (1 - alpha)`` steps have passed.

    Examples
    --------
    >>> ema_alpha(0, 0.999), ema_alpha(3, 0.999), ema_alpha(5000, 0.999)
    (0.0, 0.75, 0.999)
    """
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """Eq. 2: ``theta_t = alpha theta_t + (1 - alpha) theta_s`` for every float parameter and buffer.

    Batch-norm running statistics are averaged like the weights; integer buffers (``num_batches_tracked``)
    are copied.
    """
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
        if t.dtype.is_floating_point:
            t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        else:
            t.copy_(s)


def consistency_loss(student_logits: torch.Tensor, teacher_prob: torch.Tensor) -> torch.Tensor:
    """Eq. 13-14: cross-entropy of the student to the teacher's argmax pseudo label (``p_t > 0.5``), pixel mean.

    Examples
    --------
    >>> x = torch.tensor([0.0, 2.0]); p = torch.tensor([0.9, 0.2])
    >>> round(float(consistency_loss(x, p)), 4)  # (ln 2 + ln(1 + e^2)) / 2
    1.41
    """
    return F.binary_cross_entropy_with_logits(student_logits, (teacher_prob > 0.5).to(student_logits.dtype))


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 15: mean over pixels of ``-sum_c p_c log p_c`` (two classes), as ``softplus(x) - x sigmoid(x)``.

    Examples
    --------
    >>> round(float(entropy_loss(torch.tensor([0.0]))), 6) == round(math.log(2), 6)
    True
    """
    return (F.softplus(logits) - logits * torch.sigmoid(logits)).mean()


def foreground_scores(labels: torch.Tensor, patch: int) -> torch.Tensor:
    """Eq. 5-6: ``FS = N_f / N`` of every ``patch x patch`` patch of a (B, H, W) 0/1 pseudo-label map."""
    return F.avg_pool2d(labels[:, None].float(), patch)[:, 0]


def patch_classes(scores: torch.Tensor, fg_min: float = 0.7, bg_max: float = 0.3) -> torch.Tensor:
    """FDP (1) where ``FS >= fg_min``, BDP (0) where ``FS <= bg_max``, mixed (-1) between.

    Examples
    --------
    >>> patch_classes(torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])).tolist()
    [0, 0, -1, 1, 1]
    """
    out = torch.full(scores.shape, MIXED, dtype=torch.int64, device=scores.device)
    out[scores <= bg_max] = BDP
    out[scores >= fg_min] = FDP
    return out


def feature_labels(labels: torch.Tensor, stride: int) -> torch.Tensor:
    """0/1 pseudo labels of a (B, H, W) map on a feature grid ``stride`` times coarser (majority; ties nucleus)."""
    return (F.avg_pool2d(labels[:, None].float(), stride)[:, 0] >= 0.5).to(torch.int64)


def to_patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, h, w) -> (B * h/k * w/k, k * k, C): patches in (image, row, column) order, pixels row-major."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // k, k, w // k, k).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b * (h // k) * (w // k), k * k, c)


class FeatureBanks:
    """FDB and BDB: teacher pixel features (and pixel pseudo labels) of FDPs / BDPs of the last ``size`` batches.

    The paper keeps "the current and previous batches" (``size`` 2).
    """

    def __init__(self, size: int = 2) -> None:
        self.fg: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=size)
        self.bg: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=size)

    def push(self, patches: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> None:
        """Add one batch: ``patches`` (P, N, D), their pixel ``labels`` (P, N) and patch ``classes`` (P,)."""
        d = patches.shape[-1]
        for bank, kind in ((self.fg, FDP), (self.bg, BDP)):
            sel = classes == kind
            bank.append((patches[sel].reshape(-1, d).detach(), labels[sel].reshape(-1)))

    @staticmethod
    def _stack(bank: deque) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([f for f, _ in bank]), torch.cat([lab for _, lab in bank])

    def foreground(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._stack(self.fg)

    def background(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._stack(self.bg)

    def clear(self) -> None:
        self.fg.clear()
        self.bg.clear()


def dense_contrast(q: torch.Tensor, k_pos: torch.Tensor, q_labels: torch.Tensor, negatives: torch.Tensor,
                   neg_labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 7-9 per query: ``-log(s+ / (s+ + sum_k J s-))``, ``s = exp(cos / tau)``, ``J = [y_q != y_k]``.

    Parameters
    ----------
    q, k_pos : (M, D) tensors
        Unit query features and their positives (same location, teacher).
    q_labels : (M,) tensor
        Pseudo labels of the queries.
    negatives : (K, D) tensor
        Unit features of the opposite bank; ``neg_labels`` (K,) their pseudo labels.
    tau : float
        Temperature.

    Returns
    -------
    (M,) tensor
        0 for a query without a single valid negative.
    """
    pos = (q * k_pos).sum(1, keepdim=True) / tau
    if negatives.shape[0] == 0:
        return (pos - pos)[:, 0]
    neg = (q @ negatives.T) / tau
    neg = neg.masked_fill(q_labels[:, None] == neg_labels[None, :], float("-inf"))
    return torch.logsumexp(torch.cat([pos, neg], 1), 1) - pos[:, 0]


def _subset(n: int, most: int | None, device: torch.device) -> torch.Tensor | None:
    """Indices of a uniform random subset of ``range(n)`` of size ``most`` (torch's generator); None = all."""
    if most is None or n <= most:
        return None
    return torch.randperm(n)[:most].to(device)


def cross_patch_loss(zs: torch.Tensor, zt: torch.Tensor, labels_s: torch.Tensor, labels_t: torch.Tensor,
                     classes_s: torch.Tensor, classes_t: torch.Tensor, banks: FeatureBanks, k: int,
                     tau: float, max_patches: int | None = None, max_negatives: int | None = None) -> torch.Tensor:
    """Eq. 10-12: the mean over the student's FDPs and BDPs of their pixels' :func:`dense_contrast`.

    The teacher's FDP and BDP pixels of this batch join the banks first (current + previous batches); a query
    of an FDP contrasts with the BDB and a query of a BDP with the FDB. ``max_patches`` and ``max_negatives``
    (ours, for CPU budgets; ``None`` = all, as the paper) draw a uniform subset of the query patches (an
    unbiased estimate of Eq. 11's mean) and of each bank's pixels.

    Parameters
    ----------
    zs, zt : (B, D, h, w) tensors
        Projected student and teacher features (``zt`` carries no gradient).
    labels_s, labels_t : (B, h, w) tensors
        Pixel pseudo labels on the feature grid, of the student and of the teacher.
    classes_s, classes_t : (B, h/k, w/k) tensors
        Patch classes (:func:`patch_classes`) from each net's own pseudo labels.
    banks : FeatureBanks
    k : int
        Patch side in feature pixels.
    tau : float
        Temperature.
    max_patches, max_negatives : int, optional
        Caps on the query patches and on the negatives drawn from each bank.
    """
    ps = to_patches(F.normalize(zs, dim=1), k)
    pt = to_patches(F.normalize(zt.detach(), dim=1), k)
    ls, lt = to_patches(labels_s[:, None], k)[..., 0], to_patches(labels_t[:, None], k)[..., 0]
    cs, ct = classes_s.reshape(-1), classes_t.reshape(-1)
    banks.push(pt, lt, ct)
    chosen = torch.nonzero(cs != MIXED)[:, 0]
    keep = _subset(len(chosen), max_patches, cs.device)
    chosen = chosen if keep is None else chosen[keep]
    ps, pt, ls, cs = ps[chosen], pt[chosen], ls[chosen], cs[chosen]
    per_patch = []
    for kind, (bank, bank_labels) in ((FDP, banks.background()), (BDP, banks.foreground())):
        sel = cs == kind
        if not bool(sel.any()):
            continue
        draw = _subset(bank.shape[0], max_negatives, bank.device)
        if draw is not None:
            bank, bank_labels = bank[draw], bank_labels[draw]
        d = ps.shape[-1]
        loss = dense_contrast(ps[sel].reshape(-1, d), pt[sel].reshape(-1, d), ls[sel].reshape(-1), bank,
                              bank_labels, tau)
        per_patch.append(loss.view(-1, k * k).mean(1))
    if not per_patch:
        return zs.sum() * 0.0
    return torch.cat(per_patch).mean()


#: Strong view of the student (ours: the paper lists colour jitter, grey scaling and Gaussian blur among its
#: augmentations without their ranges): brightness, contrast and saturation factors U(1 - j, 1 + j), grey with
#: probability GREY_P, a Gaussian blur of sigma U(BLUR_SIGMA) px with probability BLUR_P.
STRONG_JITTER, GREY_P, BLUR_P, BLUR_SIGMA = 0.4, 0.2, 0.5, (0.1, 1.5)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (3, H, W) with reflect padding (radius ceil(3 sigma))."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    y = F.conv2d(F.pad(x[None], (r, r, 0, 0), mode="reflect"), g, groups=3)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), g.transpose(2, 3), groups=3)[0]


def strong_view(x: torch.Tensor) -> torch.Tensor:
    """A photometric strong view of (B, 3, H, W) RGB in [0, 1], per image, from torch's global generator.

    Geometry is unchanged, so a student pixel and the teacher pixel at the same place show the same tissue.
    """
    grey_w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    out = []
    for img in x:
        u = torch.rand(6)
        bright, contrast, sat = (1 + (2 * u[:3] - 1) * STRONG_JITTER).tolist()
        img = img * bright
        grey = (img[None] * grey_w).sum(1)
        img = (img - grey.mean()) * contrast + grey.mean()
        grey = (img[None] * grey_w).sum(1)
        img = (img - grey) * sat + grey
        if u[3] < GREY_P:
            img = (img[None] * grey_w).sum(1).expand(3, -1, -1)
        if u[4] < BLUR_P:
            img = _blur(img, BLUR_SIGMA[0] + float(u[5]) * (BLUR_SIGMA[1] - BLUR_SIGMA[0]))
        out.append(img.clamp(0, 1))
    return torch.stack(out)
