"""The contrast-based variational model (issue 18): contrast maps, the AOS Chan–Vese solve, u."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from wsi_weakseg.train.cvm import (
    ChanVeseParams,
    aos_step,
    chan_vese,
    contrast_maps,
    correlation_maps,
    cvm_segmentation,
    edge_weight,
    energy,
)


def _three_regions() -> torch.Tensor:
    """Features (2, 4, 9): left third (1, 0), middle third (0, 1), right third (1, 1) / sqrt 2 (a 'novel' tissue)."""
    f = torch.zeros(2, 4, 9)
    f[0, :, :3] = 1.0
    f[1, :, 3:6] = 1.0
    f[:, :, 6:] = 2**-0.5
    return f * 3.0  # the scale of a feature vector does not matter to the cosine


def test_contrast_maps_keep_the_in_region_and_suppress_out_and_novel_regions():
    s = correlation_maps(_three_regions(), np.array([[1, 1], [2, 4]]))  # in-point left, out-point middle
    assert torch.allclose(s[0, 0], torch.tensor([1, 1, 1, 0, 0, 0, 2**-0.5, 2**-0.5, 2**-0.5]), atol=1e-6)
    c = contrast_maps(s[:1], s[1:], eta=0.6)
    # S_p - 0.6 S_q: 1 on the left, -0.6 in the middle, 0.4 / sqrt 2 on the right; ReLU^2: 1, 0, 0.08; N keeps it
    expected = torch.tensor([1.0] * 3 + [0.0] * 3 + [0.08] * 3).expand(4, 9)
    assert c.shape == (1, 1, 4, 9) and torch.allclose(c[0, 0], expected, atol=1e-6)
    # eta = 0 (no out-points): the novel region keeps half the in-region's contrast (0.5 after squaring)
    assert torch.allclose(contrast_maps(s[:1], s[1:], eta=0.0)[0, 0, 0, 6:], torch.full((3,), 0.5), atol=1e-6)


def _disc(seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :64]
    disc = (yy - 24) ** 2 + (xx - 30) ** 2 < 14**2
    z = np.clip(np.where(disc, 0.7, 0.3) + rng.normal(0, 0.15, disc.shape), 0, 1)
    return z[None], disc


def test_aos_chan_vese_decreases_its_energy_and_converges_on_a_two_region_image():
    z, disc = _disc()
    p = ChanVeseParams()
    g, u = edge_weight(z), z.copy()
    energies = [float(energy(u, z, g, p.lam, p.eps)[0])]
    for _ in range(10):
        u = aos_step(u, z, g, p.lam, p.tau, p.eps)
        energies.append(float(energy(u, z, g, p.lam, p.eps)[0]))
    assert all(b < a for a, b in itertools.pairwise(energies))  # the large first steps descend strictly
    u, steps = chan_vese(z, p)
    assert steps < p.iterations  # converged: no pixel moved more than tol in the last step
    final = float(energy(u, z, g, p.lam, p.eps)[0])
    assert final < 0.5 * energies[0] and final <= min(energies)
    seg = u[0] > 0.5
    assert (seg & disc).sum() / (seg | disc).sum() > 0.9  # IoU with the true disc under noise of std 0.15
    assert ((u < 0.05) | (u > 0.95)).mean() > 0.9  # nearly binary, as the convex relaxation's minimiser is


def test_several_in_points_are_solved_independently_in_one_batch():
    z, _ = _disc()
    both, _ = chan_vese(np.concatenate([z, 1 - z]), ChanVeseParams(iterations=20, tol=0))
    alone, _ = chan_vese(1 - z, ChanVeseParams(iterations=20, tol=0))
    assert np.allclose(both[1], alone[0], atol=1e-9)


@pytest.mark.parametrize("eta", [0.6, 0.0])
def test_u_is_one_on_the_in_region_and_zero_on_the_out_region(eta):
    u = cvm_segmentation(_three_regions(), np.array([[1, 1], [0, 0]]), np.array([[2, 4]]), eta)
    assert u.dtype == np.float32 and u.shape == (4, 9)
    assert np.allclose(u[:, :3], 1.0) and np.allclose(u[:, 3:6], 0.0)
