"""Region metrics (issue 18) against hand-worked values."""

from __future__ import annotations

import numpy as np

from wsi_weakseg.evaluate.regions import evaluate_regions, labels_at_level0


def test_region_metrics_hand_worked():
    gt = np.zeros((6, 8), np.uint8)
    gt[0:3, 0:3] = 255  # gland A, 9 px
    gt[4:6, 4:8] = 255  # gland B, 8 px
    pred = np.zeros_like(gt)
    pred[0:3, 0:2] = 1  # 6 px of A
    pred[4:6, 4:8] = 1  # all of B
    pred[0, 6:8] = 1  # a false 2 px object
    r = evaluate_regions(pred, gt)
    # pixels: TP 14, |pred| 16, |gt| 17 -> Dice 28 / 33, IoU 14 / 19
    assert np.isclose(r["dice"], 28 / 33) and np.isclose(r["iou"], 14 / 19)
    # objects: Dice(A, 6 px part) = 12 / 15, Dice(B, B) = 1, the false object 0
    g_term = (9 * 12 / 15 + 8 * 1) / 17
    s_term = (6 * 12 / 15 + 8 * 1 + 2 * 0) / 16
    assert np.isclose(r["object_dice"], 0.5 * (g_term + s_term))


def test_all_target_prediction_scores_the_trivial_baseline():
    gt = np.zeros((4, 4), bool)
    gt[:, :2] = True
    r = evaluate_regions(np.ones_like(gt), gt)
    assert np.isclose(r["dice"], 2 * 8 / 24) and np.isclose(r["iou"], 0.5)
    assert evaluate_regions(np.zeros_like(gt), np.zeros_like(gt)) == {"dice": 1.0, "iou": 1.0, "object_dice": 1.0}


def test_labels_at_level0_takes_the_working_pixel_under_each_level0_centre():
    # scale 2.5: working pixel j spans level-0 [2.5 j, 2.5 (j + 1)); level-0 centres 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5
    work = np.array([[1, 2, 3]])
    assert labels_at_level0(work, (1, 7), 2.5).tolist() == [[1, 1, 2, 2, 2, 3, 3]]
    # the centre 7.5 lies past the 3-pixel grid (it ends at 7.5): background, as no written polygon reaches it
    assert labels_at_level0(work, (1, 8), 2.5).tolist() == [[1, 1, 2, 2, 2, 3, 3, 0]]
    # brute force on a random map: each level-0 centre inside exactly one working pixel's box
    rng = np.random.default_rng(0)
    work = rng.integers(0, 5, (7, 9))
    s = 4.032
    up = labels_at_level0(work, (28, 36), s)
    for y in range(28):
        for x in range(36):
            i = [k for k in range(7) if k * s <= y + 0.5 < (k + 1) * s]
            j = [k for k in range(9) if k * s <= x + 0.5 < (k + 1) * s]
            assert up[y, x] == (work[i[0], j[0]] if i and j else 0)
