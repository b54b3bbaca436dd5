"""The contrast-based variational model (CVM) of the regions recipe: contrast maps and a selective Chan–Vese.

Zhang, Burrows et al., "Weakly supervised segmentation with point annotations for histopathology images via
contrast-based variational model" (CVPR 2023; ``../shared/papers/contrast-variational-model-cvm.txt``),
implemented from the paper's text (Sec. 4.3; equation numbers are the paper's):

- correlation maps ``S_p`` (Eq. 4): cosine similarity of every pixel's feature vector to the feature vector at
  an annotated point;
- contrast maps ``C_pq = N(ReLU(S_p - eta S_q)^2)`` (Eq. 5) for every in-point ``p`` and out-point ``q``, and
  their mean over ``q``, ``z_p``;
- per in-point, the edge-aware convex Chan–Vese model (Eq. 6) on ``z_p``, minimised by alternating the closed
  forms of ``c1, c2`` with additive operator splitting (AOS, Weickert et al. 1998) steps of its gradient flow;
- ``u = N(mean_p u_p)`` (Eq. 7).

``N`` is min-max normalisation of each map to [0, 1] (a constant map becomes 0).

The AOS step (the paper's supplement, which we do not have, gives its own details; ours are stated here):
with the lagged diffusivity ``d = g / sqrt(|grad u|^2 + eps^2)`` and the reaction ``f = -lam r``,
``r = (z - c1)^2 - (z - c2)^2``, one step is ``u <- clip(1/2 sum_l (I - 2 tau A_l(d))^-1 (u + tau f), 0, 1)``,
``A_l`` the 1-D divergence operator along rows / columns with Neumann boundaries. Each ``(I - 2 tau A_l)`` is
tridiagonal; all lines of all in-points are solved in one banded LAPACK call per axis (lines are decoupled by
zero off-diagonals at their ends), so a step is two O(pixels) solves. The box constraint ``0 <= u <= 1`` of
the convex relaxation is kept by projection (clipping), not by the exact-penalty term of Chan, Esedoglu and
Nikolova.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import solve_banded
from torch.nn import functional as F


def minmax(maps: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``N``: each map of ``(..., H, W)`` rescaled to [0, 1] by its min and max; a constant map becomes 0.

    Examples
    --------
    >>> minmax(np.array([[1.0, 3.0], [2.0, 5.0]])).tolist()
    [[0.0, 0.5], [0.25, 1.0]]
    >>> minmax(np.full((1, 2), 7.0)).tolist()
    [[0.0, 0.0]]
    """
    lib = torch if isinstance(maps, torch.Tensor) else np
    flat = maps.reshape(*maps.shape[:-2], -1)
    lo = flat.min(-1)[0] if lib is torch else flat.min(-1)
    hi = flat.max(-1)[0] if lib is torch else flat.max(-1)
    lo, span = lo[..., None, None], (hi - lo)[..., None, None]
    safe = lib.where(span > 0, span, lib.ones_like(span))
    return lib.where(span > 0, (maps - lo) / safe, lib.zeros_like(maps))


def correlation_maps(features: torch.Tensor, points_rc: np.ndarray) -> torch.Tensor:
    """Eq. 4: cosine similarity of every pixel of ``features`` (C, H, W) to the feature at each point.

    ``points_rc`` are integer (row, col) pixel indices, shape (n, 2); returns (n, H, W) in [-1, 1].
    """
    unit = F.normalize(features, dim=0, eps=1e-8)
    rc = torch.as_tensor(np.asarray(points_rc, np.int64).reshape(-1, 2), device=features.device)
    at = unit[:, rc[:, 0], rc[:, 1]]  # (C, n)
    return torch.einsum("cn,chw->nhw", at, unit)


def contrast_maps(s_in: torch.Tensor, s_out: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 5: ``C_pq = N(ReLU(S_p - eta S_q)^2)`` for every in-point ``p`` and out-point ``q``: (P, Q, H, W)."""
    return minmax(torch.relu(s_in[:, None] - eta * s_out[None]) ** 2)


def mean_contrast(features: torch.Tensor, in_rc: np.ndarray, out_rc: np.ndarray, eta: float) -> np.ndarray:
    """``z_p``: the mean over out-points of the contrast maps of each in-point, (P, H, W) float64 in [0, 1]."""
    with torch.no_grad():
        s = correlation_maps(features.float(), np.concatenate([in_rc, out_rc]))
        c = contrast_maps(s[: len(in_rc)], s[len(in_rc):], eta)
    return c.mean(1).double().cpu().numpy()


def edge_weight(z: np.ndarray) -> np.ndarray:
    """``g(|grad z|) = 1 / (1 + |grad z|^2)`` per map of ``(..., H, W)`` (central differences, per pixel)."""
    gy, gx = np.gradient(z, axis=(-2, -1))
    return 1.0 / (1.0 + gx**2 + gy**2)


def _grad_norm(u: np.ndarray, eps: float) -> np.ndarray:
    """``sqrt(ux^2 + uy^2 + eps^2)`` with forward differences (0 across the last row / column)."""
    ux = np.diff(u, axis=-1, append=u[..., -1:])
    uy = np.diff(u, axis=-2, append=u[..., -1:, :])
    return np.sqrt(ux**2 + uy**2 + eps**2)


def region_means(z: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The closed forms of ``c1`` (mean of ``z`` weighted by ``u``) and ``c2`` (by ``1 - u``), per map: (P, 1, 1)."""
    axes = (-2, -1)
    w1, w2 = u.sum(axes, keepdims=True), (1 - u).sum(axes, keepdims=True)
    c1 = (z * u).sum(axes, keepdims=True) / np.maximum(w1, 1e-12)
    c2 = (z * (1 - u)).sum(axes, keepdims=True) / np.maximum(w2, 1e-12)
    return c1, c2


def energy(u: np.ndarray, z: np.ndarray, g: np.ndarray, lam: float, eps: float = 0.0) -> np.ndarray:
    """The Chan–Vese energy per map, with ``c1, c2`` at their closed forms for ``u``.

    ``sum g |grad u| + lam sum ((z - c1)^2 u + (z - c2)^2 (1 - u))``: Eq. 6's data term plus
    ``lam sum (z - c2)^2``, which does not depend on ``u`` but makes the alternating ``c`` update a descent step.
    ``eps`` regularises ``|grad u|`` as the AOS flow does (0: the exact total variation).
    """
    c1, c2 = region_means(z, u)
    tv = (g * _grad_norm(u, eps)).sum((-2, -1))
    data = ((z - c1) ** 2 * u + (z - c2) ** 2 * (1 - u)).sum((-2, -1))
    return tv + lam * data


def _implicit_1d(d: np.ndarray, rhs: np.ndarray, tau: float) -> np.ndarray:
    """Solve ``(I - 2 tau A) v = rhs`` along the last axis of (..., L) arrays, all lines in one banded solve.

    ``A v_i = d_{i+1/2} (v_{i+1} - v_i) - d_{i-1/2} (v_i - v_{i-1})``, ``d_{i+1/2} = (d_i + d_{i+1}) / 2``,
    Neumann ends (no flux out of a line).
    """
    shape = rhs.shape
    half = np.zeros(shape)
    half[..., :-1] = 0.5 * (d[..., :-1] + d[..., 1:])  # d_{i+1/2}, 0 at the line's end
    left = np.zeros(shape)
    left[..., 1:] = half[..., :-1]  # d_{i-1/2}, 0 at the line's start
    upper, lower = -2 * tau * half.ravel(), -2 * tau * left.ravel()
    bands = np.empty((3, upper.size))
    bands[0, 1:] = upper[:-1]
    bands[0, 0] = 0.0
    bands[1] = 1 + 2 * tau * (half + left).ravel()
    bands[2, :-1] = lower[1:]
    bands[2, -1] = 0.0
    return solve_banded((1, 1), bands, rhs.ravel(), check_finite=False).reshape(shape)


def aos_step(u: np.ndarray, z: np.ndarray, g: np.ndarray, lam: float, tau: float, eps: float) -> np.ndarray:
    """One AOS step of the gradient flow of Eq. 6 (``c1, c2`` at their closed forms for ``u``), projected on [0, 1]."""
    c1, c2 = region_means(z, u)
    rhs = u - tau * lam * ((z - c1) ** 2 - (z - c2) ** 2)
    d = g / _grad_norm(u, eps)
    along_cols = _implicit_1d(d, rhs, tau)
    along_rows = _implicit_1d(np.swapaxes(d, -1, -2).copy(), np.swapaxes(rhs, -1, -2).copy(), tau)
    return np.clip(0.5 * (along_cols + np.swapaxes(along_rows, -1, -2)), 0.0, 1.0)


@dataclass(frozen=True)
class ChanVeseParams:
    """Parameters of the selective Chan–Vese solve (``cvm.*`` of the regions config)."""

    lam: float = 2.0  # weight of the data term (the paper's lambda; its value is in the supplement we lack)
    tau: float = 0.5  # AOS time step
    eps: float = 0.1  # regularisation of |grad u| in the diffusivity
    iterations: int = 100  # most AOS steps
    tol: float = 1e-3  # stop when no pixel of any u_p moves more than this in one step


def chan_vese(z: np.ndarray, params: ChanVeseParams = ChanVeseParams(),
              u0: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Minimise Eq. 6 for every map of ``z`` (P, H, W), starting from ``u0`` (default ``z``).

    Returns ``u`` (P, H, W) in [0, 1] and the number of AOS steps taken.
    """
    z = np.asarray(z, np.float64)
    u = np.clip(z if u0 is None else np.asarray(u0, np.float64), 0.0, 1.0)
    g = edge_weight(z)
    for k in range(1, params.iterations + 1):
        new = aos_step(u, z, g, params.lam, params.tau, params.eps)
        moved = float(np.abs(new - u).max())
        u = new
        if moved < params.tol:
            return u, k
    return u, params.iterations


def cvm_segmentation(features: torch.Tensor, in_rc: np.ndarray, out_rc: np.ndarray, eta: float,
                     params: ChanVeseParams = ChanVeseParams()) -> np.ndarray:
    """Eq. 7: ``u = N(mean_p u_p)`` from a feature map (C, H, W) and the in/out points' (row, col) pixels.

    Returns (H, W) float32 in [0, 1].
    """
    z = mean_contrast(features, in_rc, out_rc, eta)
    u, _ = chan_vese(z, params)
    return minmax(u.mean(0)).astype(np.float32)
