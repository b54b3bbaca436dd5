"""Losses of the few-masks recipe (issue 16) against hand-worked values: FS, banks, dense contrast, L_cons, L_ent, EMA."""

from __future__ import annotations

import math

import pytest
import torch

from wsi_weakseg.train.contrast import (
    BDP,
    FDP,
    MIXED,
    FeatureBanks,
    consistency_loss,
    cross_patch_loss,
    dense_contrast,
    ema_alpha,
    entropy_loss,
    feature_labels,
    foreground_scores,
    gaussian_ramp,
    patch_classes,
    strong_view,
    to_patches,
    update_teacher,
)


def test_foreground_scores_and_patch_classes_of_a_hand_made_batch():
    """A 4 x 8 pseudo-label map in 2 x 2 patches: FS = nucleus pixels / 4."""
    y = torch.tensor([[[1, 1, 1, 0, 0, 0, 1, 0],
                       [1, 1, 1, 1, 0, 0, 0, 0],
                       [0, 0, 1, 1, 1, 0, 0, 0],
                       [0, 0, 0, 1, 0, 1, 0, 0]]])
    fs = foreground_scores(y, 2)
    assert fs.tolist() == [[[1.0, 0.75, 0.0, 0.25], [0.0, 0.75, 0.5, 0.0]]]
    assert patch_classes(fs, 0.7, 0.3).tolist() == [[[FDP, FDP, BDP, BDP], [BDP, FDP, MIXED, BDP]]]
    # feature labels at stride 2: majority of each 2 x 2 block, a tie (2 of 4) counts as nucleus
    assert feature_labels(y, 2).tolist() == [[[1, 1, 0, 0], [0, 1, 1, 0]]]


def test_to_patches_orders_images_rows_columns_then_pixels():
    x = torch.arange(2 * 1 * 2 * 4).float().view(2, 1, 2, 4)  # two images, one channel, 2 x 4
    p = to_patches(x, 2)
    assert p.shape == (4, 4, 1)
    assert p[:, :, 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_banks_keep_the_current_and_previous_batch():
    banks = FeatureBanks(2)
    for value in (1.0, 2.0, 3.0):
        patches = torch.full((3, 1, 2), value)  # three one-pixel patches: FDP, BDP, mixed
        banks.push(patches, torch.tensor([[1], [0], [1]]), torch.tensor([FDP, BDP, MIXED]))
    fg, fg_labels = banks.foreground()
    bg, _ = banks.background()
    assert fg[:, 0].tolist() == [2.0, 3.0] and bg[:, 0].tolist() == [2.0, 3.0] and fg_labels.tolist() == [1, 1]
    banks.clear()
    banks.push(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), torch.tensor([BDP]))
    assert banks.foreground()[0].shape == (0, 2) and banks.background()[0].shape == (1, 2)


def test_dense_contrast_is_eq_7_with_false_negatives_masked():
    q = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    kp = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    neg = torch.nn.functional.normalize(torch.randn(7, 3), dim=1)
    ql, nl, tau = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([1, 1, 0, 0, 1, 0, 1]), 0.3
    got = dense_contrast(q, kp, ql, neg, nl, tau)
    for i in range(5):
        s_pos = math.exp(float(q[i] @ kp[i]) / tau)
        s_neg = sum(math.exp(float(q[i] @ neg[j]) / tau) for j in range(7) if nl[j] != ql[i])
        assert float(got[i]) == pytest.approx(-math.log(s_pos / (s_pos + s_neg)), rel=1e-5)
    assert dense_contrast(q, kp, ql, neg[:0], nl[:0], tau).tolist() == [0.0] * 5


def _one_image(teacher_label_10: int):
    """Features 2 x 2, D = 2, one-pixel patches (k = 1); see the test's docstring."""
    zs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, -5.0]]).T.reshape(1, 2, 2, 2)
    zt = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 2, 2)
    labels_s = torch.tensor([[[1, 0], [0, 0]]])
    labels_t = torch.tensor([[[1, 0], [teacher_label_10, 1]]])
    classes_s = torch.tensor([[[FDP, BDP], [MIXED, MIXED]]])
    classes_t = torch.tensor([[[FDP, BDP], [BDP, MIXED]]])
    return zs, zt, labels_s, labels_t, classes_s, classes_t


def test_cross_patch_loss_against_hand_worked_values():
    """Student FDP query (0,0) = (1, 0), positive (1, 0), BDB = {(0, 1), (-1, 0)} both labelled 0: with tau 0.5,
    l = log((e^2 + e^0 + e^-2) / e^2) = 0.142932. Student BDP query (0,1) = (0, 1), positive (0, 1), FDB = {(1, 0)}
    labelled 1: l = log((e^2 + 1) / e^2) = 0.126928. Eq. 11: their mean. Features are L2-normalised first."""
    zs, zt, ls, lt, cs, ct = _one_image(0)
    loss = cross_patch_loss(zs, zt, ls, lt, cs, ct, FeatureBanks(2), k=1, tau=0.5)
    e2 = math.exp(2)
    fdp = math.log((e2 + 1 + math.exp(-2)) / e2)
    bdp = math.log((e2 + 1) / e2)
    assert round(fdp, 6) == 0.142932 and round(bdp, 6) == 0.126928
    assert float(loss) == pytest.approx((fdp + bdp) / 2, rel=1e-6)
    # the teacher calls pixel (1, 0) nucleus: J masks it out of the FDP query's negatives (both labelled 1)
    zs, zt, ls, lt, cs, ct = _one_image(1)
    loss = cross_patch_loss(zs, zt, ls, lt, cs, ct, FeatureBanks(2), k=1, tau=0.5)
    assert float(loss) == pytest.approx(bdp, rel=1e-6)


def test_cross_patch_loss_uses_the_previous_batch_and_flows_only_into_the_student():
    zs, zt, ls, lt, cs, ct = _one_image(0)
    banks = FeatureBanks(2)
    cross_patch_loss(zs, zt, ls, lt, cs, ct, banks, k=1, tau=0.5)
    zs = zs.clone().requires_grad_(True)
    loss = cross_patch_loss(zs, zt, ls, lt, cs, ct, banks, k=1, tau=0.5)
    e2 = math.exp(2)  # every negative now twice: the previous batch's and the current one's
    expected = (math.log((e2 + 2 + 2 * math.exp(-2)) / e2) + math.log((e2 + 2) / e2)) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert zs.grad is not None and not zt.requires_grad
    assert banks.background()[0].shape == (4, 2)  # two batches of two BDP pixels: the bank stops there
    # no FDP or BDP in the student's map: zero, still differentiable
    none = cross_patch_loss(zs, zt, ls, lt, torch.full_like(cs, MIXED), ct, banks, k=1, tau=0.5)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_capped_queries_and_negatives_are_a_seeded_uniform_draw():
    torch.manual_seed(0)
    zs, zt = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ls, lt = (torch.rand(2, 8, 8) > 0.5).long(), (torch.rand(2, 8, 8) > 0.5).long()
    cs, ct = torch.randint(-1, 2, (2, 4, 4)), torch.randint(-1, 2, (2, 4, 4))
    full = cross_patch_loss(zs, zt, ls, lt, cs, ct, FeatureBanks(2), k=2, tau=0.1)
    same = cross_patch_loss(zs, zt, ls, lt, cs, ct, FeatureBanks(2), k=2, tau=0.1, max_patches=1000, max_negatives=1000)
    assert float(same) == float(full)  # caps above the counts draw everything
    torch.manual_seed(1)
    a = cross_patch_loss(zs, zt, ls, lt, cs, ct, FeatureBanks(2), k=2, tau=0.1, max_patches=3, max_negatives=5)
    torch.manual_seed(1)
    b = cross_patch_loss(zs, zt, ls, lt, cs, ct, FeatureBanks(2), k=2, tau=0.1, max_patches=3, max_negatives=5)
    assert float(a) == float(b) and float(a) != float(full)


def test_consistency_and_entropy_hand_worked():
    logits = torch.tensor([0.0, 2.0, -1.0])
    teacher = torch.tensor([0.9, 0.2, 0.5])  # argmax: nucleus, background, background (a tie is not > 0.5)
    expected = (math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3
    assert float(consistency_loss(logits, teacher)) == pytest.approx(expected, rel=1e-6)
    p = [1 / (1 + math.exp(-x)) for x in (0.0, 2.0, -1.0)]
    h = [-(q * math.log(q) + (1 - q) * math.log(1 - q)) for q in p]
    assert float(entropy_loss(logits)) == pytest.approx(sum(h) / 3, rel=1e-6)


def test_gaussian_ramp_and_ema_schedule():
    assert gaussian_ramp(3, None, 10) == 0.0 and gaussian_ramp(4, 5, 10) == 0.0
    assert gaussian_ramp(10, 5, 10) == pytest.approx(math.exp(-5 * 0.25))
    assert gaussian_ramp(30, 5, 10) == 1.0
    assert [ema_alpha(s, 0.9) for s in (0, 1, 4, 9, 100)] == [0.0, 0.5, 0.8, 0.9, 0.9]


def test_teacher_update_is_eq_2_on_weights_and_bn_statistics():
    student, teacher = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.fill_(3.0)
        teacher.weight.fill_(1.0)
        student.running_mean.fill_(4.0)
    student.num_batches_tracked.fill_(7)
    update_teacher(teacher, student, 0.75)
    assert teacher.weight.tolist() == [1.5, 1.5]  # 0.75 * 1 + 0.25 * 3
    assert teacher.running_mean.tolist() == [1.0, 1.0] and int(teacher.num_batches_tracked) == 7
    assert student.weight.tolist() == [3.0, 3.0]


def test_strong_view_is_seeded_photometric_and_in_range():
    x = torch.rand(3, 3, 16, 16)
    torch.manual_seed(5)
    a = strong_view(x)
    torch.manual_seed(5)
    b = strong_view(x)
    assert torch.equal(a, b) and a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, x)
