"""Scribble2Label losses against hand-worked arrays (Eq. 1-3 and the prediction EMA)."""

from __future__ import annotations

import math

import pytest
import torch

from wsi_weakseg.train.losses import ema_update, partial_ce, pseudo_labels, scribble_loss, unlabelled_ce

LN2 = math.log(2.0)


def _bce(logit: float, target: int) -> float:
    """-[t log s(x) + (1 - t) log(1 - s(x))] written out."""
    s = 1.0 / (1.0 + math.exp(-logit))
    return -(math.log(s) if target else math.log(1.0 - s))


def test_partial_ce_2x2_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 7.0]])
    labels = torch.tensor([[1, 0], [0, 2]])  # three scribbled pixels, one unscribbled
    # ln 2 (logit 0), ln(1 + e^2) = 2.126928 (logit 2, target 0), ln(1 + e^-1) = 0.313262 (logit -1, target 0)
    expected = (LN2 + 2.1269280110 + 0.3132616875) / 3
    assert float(partial_ce(logits, labels)) == pytest.approx(expected, abs=1e-6)
    assert _bce(2.0, 0) == pytest.approx(2.1269280110) and _bce(-1.0, 0) == pytest.approx(0.3132616875)


def test_partial_ce_no_scribbles_is_zero_with_gradient():
    logits = torch.zeros(2, 2, requires_grad=True)
    loss = partial_ce(logits, torch.full((2, 2), 2))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_ema_by_hand():
    # alpha 0.2: y1 = f1; y2 = 0.2 * f2 + 0.8 * y1
    y1 = ema_update(None, torch.tensor([[1.0, 0.0], [0.5, 0.9]]), 0.2)
    y2 = ema_update(y1, torch.tensor([[0.0, 1.0], [0.5, 0.4]]), 0.2)
    torch.testing.assert_close(y2, torch.tensor([[0.8, 0.2], [0.5, 0.8]]))


def test_pseudo_labels_3x3_by_hand():
    ema = torch.tensor([[0.95, 0.85, 0.80], [0.50, 0.19, 0.10], [0.21, 0.99, 0.01]])
    scribbles = torch.tensor([[2, 2, 2], [2, 2, 2], [2, 0, 1]])
    # tau 0.8: > 0.8 -> 1; < 0.2 -> 0; exactly 0.8 and 0.21 / 0.5 ignored; scribbled pixels ignored.
    expected = torch.tensor([[1, 1, 2], [2, 0, 0], [2, 2, 2]])
    torch.testing.assert_close(pseudo_labels(ema, scribbles, 0.8), expected)


def test_unlabelled_ce_and_total_by_hand():
    logits = torch.tensor([[0.0, 1.0], [0.0, -3.0]])
    pseudo = torch.tensor([[1, 2], [0, 0]])
    # ln 2, ln 2, ln(1 + e^-3) = 0.048587 over 3 pixels of Omega_g
    l_up = (2 * LN2 + 0.0485873516) / 3
    assert float(unlabelled_ce(logits, pseudo)) == pytest.approx(l_up, abs=1e-6)
    scribbles = torch.tensor([[2, 1], [2, 2]])  # one scribbled pixel: logit 1, target 1 -> ln(1 + e^-1)
    l_sp = 0.3132616875
    assert float(scribble_loss(logits, scribbles, pseudo, 0.5)) == pytest.approx(l_sp + 0.5 * l_up, abs=1e-6)
    assert float(scribble_loss(logits, scribbles, None, 0.5)) == pytest.approx(l_sp, abs=1e-6)
