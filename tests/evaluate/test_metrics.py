"""Tests of wsi_weakseg.evaluate: hand-worked oracles, edge cases, invariances, brute-force cross-checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from wsi_weakseg.evaluate import (
    aji,
    detection_scores,
    evaluate_instances,
    evaluate_points,
    instance_centroids,
    mean_object_dice,
    object_dice,
    panoptic_quality,
    pixel_accuracy,
    pixel_f1,
    pixel_iou,
)

ALL_SCORES = (
    "pixel_accuracy", "pixel_f1", "pixel_iou", "object_dice", "mdice", "aji", "pq", "dq", "sq", "precision", "recall", "f1",
)
ZERO_SCORES = ALL_SCORES[1:]


@pytest.fixture
def example() -> tuple[np.ndarray, np.ndarray]:
    """6x6: two 2x2 GT squares; prediction = first square exactly, top half of the second, a false object.

    gt              pred
    1 1 . . . .     5 5 . . . 4
    1 1 . . . .     5 5 . . . 4
    . . . . . .     . . . . . 4
    . . . 2 2 .     . . . 9 9 .
    . . . 2 2 .     . . . . . .
    . . . . . .     . . . . . .
    """
    gt = np.zeros((6, 6), np.int32)
    gt[0:2, 0:2] = 1
    gt[3:5, 3:5] = 2
    pred = np.zeros((6, 6), np.int32)
    pred[0:2, 0:2] = 5
    pred[3, 3:5] = 9
    pred[0:3, 5] = 4
    return pred, gt


# --------------------------------------------------------------------------- hand-worked example


def test_pixel_metrics_by_hand(example):
    pred, gt = example
    # |G| = 8, |S| = 4 + 2 + 3 = 9, TP = 4 + 2 = 6, FP = 3, FN = 2, TN = 36 - 11 = 25
    assert pixel_accuracy(pred, gt) == pytest.approx((6 + 25) / 36)
    assert pixel_f1(pred, gt) == pytest.approx(2 * 6 / (8 + 9))
    assert pixel_iou(pred, gt) == pytest.approx(6 / (8 + 9 - 6))  # TP / (TP + FP + FN)


def test_pixel_iou_empty_cases():
    empty, full = np.zeros((3, 3), int), np.ones((3, 3), int)
    assert pixel_iou(empty, empty) == 1.0
    assert pixel_iou(full, empty) == 0.0 and pixel_iou(empty, full) == 0.0
    half = full.copy()
    half[0] = 0
    assert pixel_iou(half, full) == pytest.approx(6 / 9) and pixel_iou(full, half) == pytest.approx(6 / 9)


def test_object_dice_by_hand(example):
    pred, gt = example
    # GT side (sum |G| = 8): G1 -> S5 Dice 2*4/(4+4) = 1; G2 -> S9 Dice 2*2/(4+2) = 2/3
    g_term = (4 * 1 + 4 * 2 / 3) / 8  # = 5/6
    # pred side (sum |S| = 9): S5 Dice 1, S9 Dice 2/3, S4 overlaps nothing -> 0
    s_term = (4 * 1 + 2 * 2 / 3 + 3 * 0) / 9  # = 16/27
    assert object_dice(pred, gt) == pytest.approx(0.5 * (g_term + s_term))
    assert object_dice(pred, gt) == pytest.approx(77 / 108)


def test_mean_object_dice_by_hand(example):
    pred, gt = example
    # G1 -> S5 Dice 1; G2 -> S9 Dice 2*2/(4+2) = 2/3; the false object S4 is not counted
    assert mean_object_dice(pred, gt) == pytest.approx((1 + 2 / 3) / 2)


def test_mean_object_dice_tie_goes_to_the_smaller_partner():
    # G = row 0 cols 0..3 (4 px); A = cols 0..1 (2 px, I = 2); B = cols 2..3 plus row 1 cols 0..3 (6 px, I = 2)
    # equal overlap: A (Dice 2*2/(4+2) = 2/3) wins over B (Dice 2*2/(4+6) = 0.4), whatever the labels
    gt = np.zeros((2, 6), int)
    gt[0, 0:4] = 1
    for small, large in ((1, 2), (2, 1)):
        pred = np.zeros_like(gt)
        pred[0, 0:2] = small
        pred[0, 2:4] = large
        pred[1, 0:4] = large
        assert mean_object_dice(pred, gt) == pytest.approx(2 / 3), (small, large)


def test_mean_object_dice_gt_object_without_overlap_scores_zero():
    gt = np.zeros((3, 8), int)
    gt[0, 0:2] = 1
    gt[2, 0:4] = 2
    pred = np.zeros_like(gt)
    pred[0, 0:2] = 1  # G1 exact, Dice 1
    pred[2, 6:8] = 3  # a false object: overlaps nothing, not counted
    assert mean_object_dice(pred, gt) == pytest.approx((1 + 0) / 2)


def test_mean_object_dice_merged_prediction_partners_both_gt_objects():
    gt = np.zeros((4, 6), int)
    gt[1:3, 0:2] = 1
    gt[1:3, 3:5] = 2
    merged = np.zeros_like(gt)
    merged[1:3, 0:5] = 7  # 10 px covering both: each GT object has Dice 2*4/(4+10) = 4/7
    assert mean_object_dice(merged, gt) == pytest.approx(4 / 7)
    # GlaS object Dice also weighs the prediction side: 0.5 * (4/7 + Dice(G1 or G2, S7) = 4/7)
    assert object_dice(merged, gt) == pytest.approx(4 / 7)


def test_mean_object_dice_is_unweighted():
    # G1 2 px matched exactly (Dice 1); G2 8 px half covered (Dice 2*4/(8+4) = 2/3); mean not area-weighted
    gt = np.zeros((3, 8), int)
    gt[0, 0:2] = 1
    gt[2, 0:8] = 2
    pred = np.zeros_like(gt)
    pred[0, 0:2] = 1
    pred[2, 0:4] = 2
    assert mean_object_dice(pred, gt) == pytest.approx((1 + 2 / 3) / 2)  # weighted would be (2 + 8*2/3) / 10


def test_mean_object_dice_empty_cases(example):
    pred, gt = example
    empty = np.zeros_like(gt)
    assert mean_object_dice(empty, empty) == 1.0
    assert mean_object_dice(pred, empty) == 0.0  # predictions but no GT objects
    assert mean_object_dice(empty, gt) == 0.0  # GT objects, nothing predicted


@pytest.mark.parametrize("seed", range(10))
def test_mean_object_dice_invariant_to_permuting_labels(seed):
    rng = np.random.default_rng(seed)
    gt, pred = _random_labels(rng), _random_labels(rng)
    base = mean_object_dice(pred, gt)
    assert 0.0 < base < 1.0
    for _ in range(3):
        # a bijection of the object labels 1..max onto other positive values, background kept at 0
        lut_p = np.concatenate([[0], rng.permutation(np.arange(1, pred.max() + 1)) * 3])
        lut_g = np.concatenate([[0], rng.permutation(np.arange(1, gt.max() + 1)) + 500])
        assert mean_object_dice(lut_p[pred], lut_g[gt]) == pytest.approx(base)


def test_aji_by_hand(example):
    pred, gt = example
    # G1 -> S5: I = 4, U = 4;  G2 -> S9 (IoU 2/4): I = 2, U = 4;  S4 unused: U += 3
    assert aji(pred, gt) == pytest.approx((4 + 2) / (4 + 4 + 3))


def test_panoptic_quality_by_hand(example):
    pred, gt = example
    # IoU(G1, S5) = 1 > 0.5 matches; IoU(G2, S9) = 0.5 is NOT > 0.5 -> TP 1, FP 2 (S9, S4), FN 1 (G2)
    got = panoptic_quality(pred, gt)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 2, 1)
    assert got["sq"] == pytest.approx(1.0)
    assert got["dq"] == pytest.approx(1 / (1 + 2 / 2 + 1 / 2))  # 0.4
    assert got["pq"] == pytest.approx(0.4)
    # at threshold 0.4 the half-covered square matches: TP 2, FP 1, FN 0
    low = panoptic_quality(pred, gt, iou_threshold=0.4)
    assert (low["tp"], low["fp"], low["fn"]) == (2, 1, 0)
    assert low["sq"] == pytest.approx((1 + 0.5) / 2)
    assert low["dq"] == pytest.approx(2 / (2 + 0.5))
    assert low["pq"] == pytest.approx(0.75 * 0.8)


def test_evaluate_instances_by_hand(example):
    pred, gt = example
    got = evaluate_instances(pred, gt, radius_px=1.0)
    # centroids: gt (0.5, 0.5), (3.5, 3.5); pred (0.5, 0.5), (3, 3.5) at 0.5 from G2, (1, 5) far away
    expected = {
        "pixel_accuracy": 31 / 36,
        "pixel_f1": 12 / 17,
        "pixel_iou": 6 / 11,
        "object_dice": 77 / 108,
        "mdice": 5 / 6,
        "aji": 6 / 11,
        "pq": 0.4,
        "dq": 0.4,
        "sq": 1.0,
        "precision": 2 / 3,
        "recall": 1.0,
        "f1": 2 * 2 / (3 + 2),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert (got["n_pred"], got["n_gt"]) == (3, 2)
    assert all(type(v) in (float, int) for v in got.values())


def test_aji_counts_a_merged_prediction_once_per_gt_object():
    gt = np.zeros((4, 6), int)
    gt[1:3, 0:2] = 1
    gt[1:3, 3:5] = 2
    merged = np.zeros_like(gt)
    merged[1:3, 0:5] = 7  # covers both objects and the column between (10 px)
    # G1 -> S7: I = 4, U = 10;  G2 -> S7 again: I = 4, U = 10  (original AJI, no one-to-one)
    assert aji(merged, gt) == pytest.approx(8 / 20)


def test_aji_picks_max_iou_not_max_intersection():
    # G = row 0, cols 0..9 (10 px)
    # S1 = row 0 cols 0..5 plus all of row 1 (6 + 12 = 18 px): I = 6, U = 10 + 18 - 6 = 22, IoU 0.27
    # S2 = row 0 cols 6..9 (4 px):                              I = 4, U = 10,               IoU 0.40
    gt = np.zeros((2, 12), int)
    gt[0, 0:10] = 1
    pred = np.zeros_like(gt)
    pred[0, 0:6] = 1
    pred[1, :] = 1
    pred[0, 6:10] = 2
    # max IoU picks S2: C = 4, U = 10 + |S1| (unused) = 28   (max intersection would give 6 / 26)
    assert aji(pred, gt) == pytest.approx(4 / 28)


def test_aji_exact_tie():
    gt = np.zeros((1, 10), int)
    gt[0, 0:4] = 1
    pred = np.zeros_like(gt)
    pred[0, 0:2] = 1  # I = 2, U = 4
    pred[0, 2:4] = 2  # I = 2, U = 4: tie in IoU and intersection, label 1 is chosen
    # C = 2, U = 4 + 2 (the other half, unused) whichever is chosen
    assert aji(pred, gt) == pytest.approx(2 / 6)


def test_gt_object_without_overlap_adds_only_its_area_to_aji():
    gt = np.zeros((3, 8), int)
    gt[0, 0:2] = 1
    gt[2, 0:4] = 2
    pred = np.zeros_like(gt)
    pred[0, 0:2] = 1
    # G1 -> S1: I = 2, U = 2; G2 overlaps nothing: U += 4
    assert aji(pred, gt) == pytest.approx(2 / 6)


# --------------------------------------------------------------------------- edge cases


def test_identical_inputs_give_one(example):
    _, gt = example
    got = evaluate_instances(gt, gt, radius_px=0.0)
    for key in ALL_SCORES:
        assert got[key] == pytest.approx(1.0), key


def test_empty_prediction(example):
    _, gt = example
    empty = np.zeros_like(gt)
    got = evaluate_instances(empty, gt, radius_px=3.0)
    assert got["pixel_accuracy"] == pytest.approx(28 / 36)
    for key in ZERO_SCORES:
        assert got[key] == 0.0, key
    assert panoptic_quality(empty, gt)["fn"] == 2


def test_empty_ground_truth(example):
    pred, _ = example
    empty = np.zeros_like(pred)
    got = evaluate_instances(pred, empty, radius_px=3.0)
    assert got["pixel_accuracy"] == pytest.approx(27 / 36)
    for key in ZERO_SCORES:
        assert got[key] == 0.0, key
    assert panoptic_quality(pred, empty)["fp"] == 3


def test_both_empty_gives_one():
    empty = np.zeros((5, 5), np.uint16)
    got = evaluate_instances(empty, empty, radius_px=3.0)
    for key in ALL_SCORES:
        assert got[key] == 1.0, key
    assert panoptic_quality(empty, empty) == {"dq": 1.0, "sq": 1.0, "pq": 1.0, "tp": 0, "fp": 0, "fn": 0}


def test_label_permutation_invariance(example):
    pred, gt = example
    rng = np.random.default_rng(0)
    base = evaluate_instances(pred, gt, radius_px=1.0)
    for _ in range(5):
        lut_p = np.zeros(pred.max() + 1, np.int64)
        lut_p[1:] = rng.permutation(np.arange(100, 100 + pred.max()))
        lut_g = np.zeros(gt.max() + 1, np.int64)
        lut_g[1:] = rng.permutation(np.arange(7, 7 + gt.max())) * 1000
        got = evaluate_instances(lut_p[pred], lut_g[gt], radius_px=1.0)
        assert got == pytest.approx(base)


def test_input_validation():
    a = np.zeros((3, 3), int)
    with pytest.raises(ValueError, match="shapes differ"):
        aji(a, np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="negative"):
        aji(a - 1, a)
    with pytest.raises(TypeError):
        aji(a.astype(float), a)
    with pytest.raises(ValueError):
        panoptic_quality(a, a, iou_threshold=1.0)
    with pytest.raises(ValueError):
        detection_scores([[0, 0]], [[0, 0]], radius=-1)
    with pytest.raises(ValueError):
        detection_scores([[0, 0, 0]], [[0, 0]], radius=1)


def test_large_sparse_label_values_are_accepted(example):
    pred, gt = example
    big = np.where(pred > 0, pred.astype(np.uint64) + np.uint64(2**40), 0).astype(np.uint64)
    assert aji(big, gt) == pytest.approx(aji(pred, gt))


# --------------------------------------------------------------------------- brute-force cross-checks


def _brute(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Per-object loops over full masks; the slow, obvious versions of the same definitions."""
    gs = [gt == k for k in np.unique(gt[gt > 0])]
    ss = [pred == k for k in np.unique(pred[pred > 0])]
    inter = np.array([[np.sum(g & s) for s in ss] for g in gs]).reshape(len(gs), len(ss))
    ga = np.array([g.sum() for g in gs])
    sa = np.array([s.sum() for s in ss])
    union = ga[:, None] + sa[None, :] - inter
    iou = inter / np.maximum(union, 1)
    # object Dice
    def side(areas, other_areas, inter_rows):
        total = 0.0
        for a, row in zip(areas, inter_rows):
            if row.size and row.max() > 0:
                cands = np.flatnonzero(row == row.max())
                total += a * max(2 * row[c] / (a + other_areas[c]) for c in cands)
        return total / areas.sum()
    dice = 0.5 * (side(ga, sa, inter) + side(sa, ga, inter.T))
    # mDice: unweighted mean over GT objects of the Dice with the most-overlapping prediction (ties: best Dice)
    mdice = np.mean([side(np.array([a]), sa, row[None]) for a, row in zip(ga, inter)])
    fg_iou = np.sum((pred > 0) & (gt > 0)) / np.sum((pred > 0) | (gt > 0))
    # AJI (max IoU; objects without overlap add their own area)
    c = u = 0
    used = set()
    for i in range(len(gs)):
        if inter[i].max() == 0:
            u += ga[i]
            continue
        j = int(np.argmax(iou[i]))
        c += inter[i, j]
        u += union[i, j]
        used.add(j)
    u += sum(sa[j] for j in range(len(ss)) if j not in used)
    matched = iou > 0.5
    tp = int(matched.sum())
    dq = tp / (tp + 0.5 * (len(ss) - tp) + 0.5 * (len(gs) - tp))
    sq = iou[matched].mean() if tp else 0.0
    return {"object_dice": dice, "mdice": mdice, "pixel_iou": fg_iou, "aji": c / u, "pq": dq * sq, "dq": dq, "sq": sq}


def _random_labels(rng: np.random.Generator, shape=(24, 24), n=8) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        h, w = rng.integers(2, 7, size=2)
        labels[r : r + h, c : c + w] = rng.integers(1, 50)
    return labels


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt, pred = _random_labels(rng), _random_labels(rng)
    if not (gt.any() and pred.any()):
        pytest.skip("degenerate draw")
    want = _brute(pred, gt)
    got = evaluate_instances(pred, gt, radius_px=2.0)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


# --------------------------------------------------------------------------- detection


def test_detection_is_optimal_not_greedy():
    # greedy nearest-first takes (p0, g0) at 0.9 and leaves p1 with no partner within 1.2;
    # the optimal one-to-one matching is p0-g1 (1.1) and p1-g0 (1.0): two matches
    gt = np.array([[0.0, 0.0], [0.0, 2.0]])
    pred = np.array([[0.0, 0.9], [0.0, -1.0]])
    got = detection_scores(pred, gt, radius=1.2)
    assert (got["tp"], got["fp"], got["fn"]) == (2, 0, 0)
    assert got["f1"] == 1.0


def test_detection_is_one_to_one():
    gt = np.array([[0.0, 0.0]])
    pred = np.array([[0.0, 0.1], [0.0, -0.1], [0.1, 0.0]])  # three predictions near one point
    got = detection_scores(pred, gt, radius=1.0)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 2, 0)
    assert got["precision"] == pytest.approx(1 / 3)
    assert got["recall"] == 1.0
    assert got["f1"] == pytest.approx(2 * 1 / (3 + 1))
    swapped = detection_scores(gt, pred, radius=1.0)
    assert (swapped["tp"], swapped["fp"], swapped["fn"]) == (1, 0, 2)


def test_detection_radius_is_inclusive():
    # 3-4-5 triangle: distance exactly 5
    assert detection_scores([[3.0, 4.0]], [[0.0, 0.0]], radius=5.0)["tp"] == 1
    assert detection_scores([[3.0, 4.0]], [[0.0, 0.0]], radius=np.nextafter(5.0, 0))["tp"] == 0
    assert detection_scores([[1.0, 1.0]], [[1.0, 1.0]], radius=0.0)["tp"] == 1  # coincident, zero radius


def test_detection_empty_sets():
    none = np.zeros((0, 2))
    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0}
    one = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0}
    assert detection_scores(none, none, 2.0) == {**one, "fp": 0, "fn": 0}
    assert detection_scores(none, [[1, 1]], 2.0) == {**zero, "fp": 0, "fn": 1}
    assert detection_scores([[1, 1]], [], 2.0) == {**zero, "fp": 1, "fn": 0}


def test_detection_matches_exhaustive_search():
    rng = np.random.default_rng(3)
    for _ in range(30):
        gt = rng.uniform(0, 6, size=(rng.integers(0, 6), 2))
        pred = rng.uniform(0, 6, size=(rng.integers(0, 6), 2))
        best = 0
        if len(gt) and len(pred):
            # largest matching by brute force over injections of the smaller set
            d = np.hypot(*(pred[:, None, :] - gt[None, :, :]).transpose(2, 0, 1))
            small, large = (d, len(gt)) if len(pred) <= len(gt) else (d.T, len(pred))
            for perm in itertools.permutations(range(large), small.shape[0]):
                best = max(best, int(sum(small[i, j] <= 1.5 for i, j in enumerate(perm))))
        assert detection_scores(pred, gt, radius=1.5)["tp"] == best


def test_instance_centroids_and_evaluate_points(example):
    pred, gt = example
    np.testing.assert_allclose(instance_centroids(gt), [[0.5, 0.5], [3.5, 3.5]])
    # pred labels 4, 5, 9 in that order: (1, 5), (0.5, 0.5), (3, 3.5)
    np.testing.assert_allclose(instance_centroids(pred), [[1.0, 5.0], [0.5, 0.5], [3.0, 3.5]])
    gt_points = instance_centroids(gt)
    from_labels = evaluate_points(pred, gt_points, radius_px=1.0)
    from_points = evaluate_points(instance_centroids(pred), gt_points, radius_px=1.0)
    assert from_labels == from_points
    assert (from_labels["tp"], from_labels["fp"], from_labels["fn"]) == (2, 1, 0)
    assert evaluate_points(np.zeros((6, 6), int), gt_points, radius_px=1.0)["recall"] == 0.0


# --------------------------------------------------------------------------- real data


def test_monuseg_label_map(shared_data):
    io = pytest.importorskip("skimage.io")
    paths = sorted((shared_data / "monuseg-train" / "labels").glob("*.png"))
    assert paths, f"no MoNuSeg label maps under {shared_data / 'monuseg-train' / 'labels'}"
    gt = io.imread(paths[0])
    assert gt.dtype == np.uint16 and gt.ndim == 2

    same = evaluate_instances(gt, gt, radius_px=6.0)
    for key in ALL_SCORES:
        assert same[key] == pytest.approx(1.0), key

    # remove one object from the prediction: every other GT object still matches itself exactly,
    # so C = A - a (a = its area, A = total foreground) and U = A (the missing object adds |G| = a)
    ids, areas = np.unique(gt[gt > 0], return_counts=True)
    victim = ids[len(ids) // 2]
    a, total = int(areas[len(ids) // 2]), int(areas.sum())
    pred = np.where(gt == victim, 0, gt)
    got = evaluate_instances(pred, gt, radius_px=6.0)
    n = len(ids)
    assert got["aji"] == pytest.approx((total - a) / total)
    assert got["pixel_f1"] == pytest.approx(2 * (total - a) / (2 * total - a))
    assert got["pixel_iou"] == pytest.approx((total - a) / total)
    assert got["mdice"] == pytest.approx((n - 1) / n)  # the others have Dice 1, the missing one 0
    assert got["pq"] == pytest.approx((n - 1) / (n - 1 + 0.5))  # SQ = 1, FN = 1
    assert got["recall"] == pytest.approx((n - 1) / n)
    assert got["precision"] == 1.0
