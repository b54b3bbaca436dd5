"""Points-recipe losses against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from wsi_weakseg.train.losses import binary_kl, ema_update, masked_bce, pairwise_crf_loss, pseudo_target, ramp_weights


def test_ramp_weights_follow_the_paper():
    assert ramp_weights(60, 60, 1.0, 0.1) == (1.0, 0.0)
    a, b = ramp_weights(15, 60, 2.0, 0.4)
    assert a == pytest.approx(2.0 * 0.25**2) and b == pytest.approx(0.4 * 0.75**2)


def test_masked_bce_ignores_label_2():
    logits = torch.tensor([0.0, 2.0, -50.0])
    labels = torch.tensor([1, 0, 2])
    # mean of -log(sigmoid(0)) and -log(1 - sigmoid(2)); the ignored pixel does not count
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert float(masked_bce(logits, labels)) == pytest.approx(expected, rel=1e-6)
    assert float(masked_bce(logits, torch.full((3,), 2))) == 0.0


def test_pseudo_target_fills_only_ignored_pixels():
    cluster = torch.tensor([0, 1, 2, 2])
    ema = torch.tensor([0.9, 0.1, 0.3, 0.7])
    assert pseudo_target(cluster, ema).tolist() == pytest.approx([0.0, 1.0, 0.3, 0.7])


def test_binary_kl_hand_worked():
    # p = 0.8, y = sigmoid(0) = 0.5: KL = 0.8 ln(1.6) + 0.2 ln(0.4)
    expected = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert float(binary_kl(torch.tensor([0.0]), torch.tensor([0.8]))) == pytest.approx(expected, rel=1e-5)
    assert float(binary_kl(torch.tensor([3.0]), torch.sigmoid(torch.tensor([3.0])))) == pytest.approx(0.0, abs=1e-6)


def test_ema_update():
    p = ema_update(None, torch.tensor([1.0]), 0.5)
    p = ema_update(p, torch.tensor([0.0]), 0.5)
    p = ema_update(p, torch.tensor([0.0]), 0.5)
    assert float(p) == 0.25


def test_ramps_and_cosine_lr_follow_the_epochs_run():
    import torch

    from wsi_weakseg.train.config import load_config
    from wsi_weakseg.train.points_recipe import make_scheduler, ramp_length

    cfg = load_config(overrides={"optim": {"epochs": 14}})
    assert ramp_length(cfg) == 14
    assert ramp_weights(13, ramp_length(cfg), 1.0, 0.1)[0] == (13 / 14) ** 2
    assert ramp_length(load_config(overrides={"optim": {"epochs": 14}, "points": {"ramp_epochs": 28}})) == 28
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, {**cfg["optim"], "lr_schedule": "cosine", "epochs": 4})
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # cosine over 4 epochs: (1 + cos(pi k / 4)) / 2 for k = 0..3, hand-worked
    assert lrs == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466], rel=1e-6)
    step = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), cfg["optim"])
    assert isinstance(step, torch.optim.lr_scheduler.StepLR)


def test_colorizer_pool_sets_the_grid_of_prediction_and_target():
    from wsi_weakseg.train.points_recipe import Colorizer

    prob = torch.rand(2, 1, 32, 48)
    full, half = Colorizer(pool=1), Colorizer(pool=2)
    assert full(prob).shape == (2, 3, 32, 48)
    assert half(prob).shape == (2, 3, 16, 24)
    rgb = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(full.reduce(rgb), rgb)
    # pool 2: each output pixel is the mean of its 2x2 block (hand-worked for the first block: 0, 1, 4, 5)
    assert half.reduce(rgb)[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    with pytest.raises(ValueError, match="positive integer"):
        Colorizer(pool=0)


def _crf_brute_force(prob, rgb, radius, sigma_xy, sigma_rgb):
    """Every ordered pair of distinct pixels within the window, one at a time."""
    n, h, w = prob.shape
    total = 0.0
    for b in range(n):
        for y in range(h):
            for x in range(w):
                for v in range(max(0, y - radius), min(h, y + radius + 1)):
                    for u in range(max(0, x - radius), min(w, x + radius + 1)):
                        if (v, u) == (y, x):
                            continue
                        c2 = float(((rgb[b, :, y, x] - rgb[b, :, v, u]) ** 2).sum())
                        k = math.exp(-((y - v) ** 2 + (x - u) ** 2) / (2 * sigma_xy**2) - c2 / (2 * sigma_rgb**2))
                        s, t = float(prob[b, y, x]), float(prob[b, v, u])
                        total += k * (s * (1 - t) + t * (1 - s))
    return total / (n * h * w)


def test_pairwise_crf_on_a_2x2_patch_by_hand():
    # one foreground pixel (top left) of one colour: its 3 neighbours each cost 1 x w in both orders
    prob = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    rgb = torch.zeros(1, 3, 2, 2)
    expected = 2 * (2 * math.exp(-0.5) + math.exp(-1.0)) / 4
    assert float(pairwise_crf_loss(prob, rgb, 1, 1.0, 0.1)) == pytest.approx(expected, rel=1e-6)
    # a colour edge between the columns: the horizontal and diagonal pairs cross it and cost ~0
    rgb[:, :, :, 1] = 1.0
    assert float(pairwise_crf_loss(prob, rgb, 1, 1.0, 0.1)) == pytest.approx(2 * math.exp(-0.5) / 4, rel=1e-6)
    # a constant labelling costs nothing
    assert float(pairwise_crf_loss(torch.ones(1, 2, 2), rgb, 1, 1.0, 0.1)) == 0.0


def test_pairwise_crf_equals_the_brute_force_sum():
    g = torch.Generator().manual_seed(0)
    prob, rgb = torch.rand(2, 5, 7, generator=g), torch.rand(2, 3, 5, 7, generator=g)
    got = float(pairwise_crf_loss(prob, rgb, 2, 1.5, 0.3))
    assert got == pytest.approx(_crf_brute_force(prob, rgb, 2, 1.5, 0.3), rel=1e-5)
