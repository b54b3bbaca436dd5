"""Losses of the regions recipe (CVM, Zhang et al. CVPR 2023, Sec. 4.2): pCE on the points and the
uncertainty-weighted KL divergence to the variational segmentation ``u``.

The partial cross-entropy (Eq. 3) is :func:`~wsi_weakseg.train.losses.partial_ce` (binary cross-entropy over
the annotated pixels; labels 0 out, 1 in, 2 not annotated).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def binary_entropy(u: torch.Tensor) -> torch.Tensor:
    """``h = -u log u - (1 - u) log(1 - u)`` (natural log; 0 at u = 0 and u = 1)."""
    return -(torch.xlogy(u, u) + torch.xlogy(1 - u, 1 - u))


def weighted_kl(logits: torch.Tensor, u: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``L_wkl``: mean over pixels of ``e^{-2 h(u)} KL(u || sigmoid(logits))``.

    The paper prints the sum with a leading minus sign; the KL divergence is non-negative and the loss is
    minimised, so we take it positive (the minus can only be a typo). ``u`` is a fixed target (no gradient
    flows into it or into the weights). ``mask`` (optional, non-zero = counted) limits the pixel set ``K`` to
    the annotated region; an empty set gives 0.

    Examples
    --------
    ``u = 1`` at logit 0 costs ``ln 2`` at weight 1; ``u = 0.5`` at logit 0 costs nothing:

    >>> round(float(weighted_kl(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5]))), 6)
    0.346574
    """
    u = u.detach().to(logits.dtype)
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    kl = torch.xlogy(u, u) - u * log_p + torch.xlogy(1 - u, 1 - u) - (1 - u) * log_q
    w = torch.exp(-2.0 * binary_entropy(u))
    values = w * kl
    if mask is None:
        return values.mean()
    m = mask != 0
    if not bool(m.any()):
        return logits.sum() * 0.0
    return values[m].mean()
