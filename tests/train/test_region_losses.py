"""pCE and the uncertainty-weighted KL of the regions recipe against hand-worked values."""

from __future__ import annotations

import math

import torch

from wsi_weakseg.train.losses import partial_ce
from wsi_weakseg.train.region_losses import binary_entropy, weighted_kl


def test_partial_ce_averages_over_the_annotated_points_only():
    logits = torch.tensor([0.0, math.log(3.0), 5.0, -7.0])  # p = 0.5, 0.75, ., .
    labels = torch.tensor([1, 0, 2, 2])  # in, out, not annotated x2
    expected = (math.log(2.0) + -math.log(0.25)) / 2  # -(log 0.5 + log(1 - 0.75)) / 2
    assert math.isclose(float(partial_ce(logits, labels)), expected, rel_tol=1e-6)


def test_weighted_kl_hand_worked():
    # u = 0.8 at p = 0.5: KL = 0.8 ln 1.6 + 0.2 ln 0.4 = 0.192745; h = 0.500402; w = e^-2h = 0.367584
    kl = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert math.isclose(kl, 0.192745, abs_tol=1e-6) and math.isclose(h, 0.500402, abs_tol=1e-6)
    assert math.isclose(float(binary_entropy(torch.tensor(0.8))), h, rel_tol=1e-6)
    logits = torch.tensor([0.0, 0.0, 0.0, math.log(9.0)])
    u = torch.tensor([0.8, 1.0, 0.5, 0.9])  # the last is predicted exactly (p = 0.9): KL 0
    expected = (math.exp(-2 * h) * kl + math.log(2.0) + 0.25 * 0.0 + 0.0) / 4
    assert math.isclose(float(weighted_kl(logits, u)), expected, rel_tol=1e-5)
    # the mask limits K to the region: only the first two pixels
    masked = float(weighted_kl(logits, u, torch.tensor([1, 1, 0, 0])))
    assert math.isclose(masked, (math.exp(-2 * h) * kl + math.log(2.0)) / 2, rel_tol=1e-5)
    assert float(weighted_kl(logits, u, torch.zeros(4))) == 0.0


def test_weighted_kl_pulls_the_prediction_towards_u_and_leaves_u_alone():
    logits = torch.zeros(3, requires_grad=True)
    u = torch.tensor([0.95, 0.05, 0.5], requires_grad=True)
    weighted_kl(logits, u).backward()
    g = logits.grad
    assert g[0] < 0 and g[1] > 0 and g[2] == 0  # up towards 0.95, down towards 0.05; u = 0.5 has weight 1/4 and KL 0
    assert u.grad is None
