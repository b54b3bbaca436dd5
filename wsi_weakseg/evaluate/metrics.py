"""Segmentation metrics of nucleus instance label images: pixel, object Dice, mDice, AJI, panoptic quality.

All functions take plain 2-D label images (0 = background, any positive integers as object ids, not
necessarily consecutive) and return plain floats or dicts. Object metrics share one sparse overlap table
(:func:`~wsi_weakseg.evaluate._overlap.overlap_table`), so they cost one pass over the pixels, not one
per object. Every metric is invariant to relabelling the objects, except for AJI in the exact-tie case
documented in :func:`aji`.

The running example of the docstrings (``gt`` and ``pred``, repeated in each): two 2x2 ground-truth
squares; the prediction covers the first exactly, the upper half of the second, and adds a false 3-pixel
object.

>>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
>>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4

References
----------
.. [1] Sirinukunwattana K. et al. (2017). Gland segmentation in colon histology images: the GlaS
   challenge contest. Medical Image Analysis 35, 489-502.
.. [2] Kumar N. et al. (2017). A dataset and a technique for generalized nuclear segmentation for
   computational pathology. IEEE TMI 36(7), 1550-1560.
.. [3] Kirillov A. et al. (2019). Panoptic segmentation. CVPR.
.. [4] Nishimura K., Ker D. F. E., Bise R. (2019). Weakly supervised cell instance segmentation by
   propagating from detection response. MICCAI.
.. [5] Lee H., Jeong W.-K. (2020). Scribble2Label: scribble-supervised cell segmentation via
   self-generating pseudo-labels with consistency. MICCAI.
"""

from __future__ import annotations

import numpy as np

from ._overlap import (
    Overlap,
    check_pair,
    compact_labels,
    compact_pair,
    first_per_group,
    iou_matches,
    overlap_table,
)
from .detection import _as_points, centroids_from_index, detection_scores

__all__ = [
    "pixel_accuracy",
    "pixel_f1",
    "pixel_iou",
    "object_dice",
    "mean_object_dice",
    "aji",
    "panoptic_quality",
    "evaluate_instances",
    "evaluate_points",
]


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of pixels whose foreground/background state (label > 0) agrees.

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4
    >>> pixel_accuracy(pred, gt)  # 6 TP + 25 TN of 36 pixels
    0.8611111111111112
    >>> pixel_accuracy(np.zeros((2, 2)), np.zeros((2, 2)))
    1.0
    """
    pred, gt = check_pair(pred, gt)
    return float(np.count_nonzero((pred > 0) == (gt > 0)) / gt.size)


def pixel_f1(pred: np.ndarray, gt: np.ndarray) -> float:
    """F1 (= Dice) of the binary foreground (label > 0).

    Both empty gives 1.0; exactly one empty gives 0.0.

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4
    >>> pixel_f1(pred, gt)  # 2 * 6 / (9 + 8)
    0.7058823529411765
    >>> pixel_f1(np.zeros((2, 2)), np.zeros((2, 2))), pixel_f1(np.ones((2, 2)), np.zeros((2, 2)))
    (1.0, 0.0)
    """
    pred, gt = check_pair(pred, gt)
    p, g = pred > 0, gt > 0
    total = np.count_nonzero(p) + np.count_nonzero(g)
    if total == 0:
        return 1.0
    return float(2 * np.count_nonzero(p & g) / total)


def pixel_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU (Jaccard index) of the binary foreground (label > 0), as Scribble2Label [5]_ reports.

    Both empty gives 1.0; exactly one empty gives 0.0.

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4
    >>> pixel_iou(pred, gt)  # 6 / (9 + 8 - 6)
    0.5454545454545454
    >>> pixel_iou(np.zeros((2, 2)), np.zeros((2, 2))), pixel_iou(np.ones((2, 2)), np.zeros((2, 2)))
    (1.0, 0.0)
    """
    pred, gt = check_pair(pred, gt)
    p, g = pred > 0, gt > 0
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(p & g) / union)


def _object_dice(t: Overlap) -> float:
    n_g, n_p = t.gt_areas.size, t.pred_areas.size
    if n_g == 0 or n_p == 0:
        return 1.0 if n_g == n_p else 0.0
    dice = 2 * t.inter / (t.gt_areas[t.gi] + t.pred_areas[t.pj])
    # best partner = largest overlap; on equal overlap the smaller partner (higher Dice)
    best_g = first_per_group(t.gi, -t.inter, t.pred_areas[t.pj])
    best_p = first_per_group(t.pj, -t.inter, t.gt_areas[t.gi])
    g_term = np.sum(t.gt_areas[t.gi[best_g]] * dice[best_g]) / t.gt_areas.sum()
    p_term = np.sum(t.pred_areas[t.pj[best_p]] * dice[best_p]) / t.pred_areas.sum()
    return float(0.5 * (g_term + p_term))


def object_dice(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """Object-level Dice of the GlaS challenge [1]_.

    ``0.5 * (sum_i w_i Dice(G_i, S*(G_i)) + sum_j v_j Dice(G*(S_j), S_j))`` with ``w_i = |G_i| / sum |G|``,
    ``v_j = |S_j| / sum |S|``; ``S*(G_i)`` is the predicted object overlapping ``G_i`` most and
    ``G*(S_j)`` the ground-truth object overlapping ``S_j`` most. An object overlapping nothing scores 0.

    Notes
    -----
    Ties in overlap are broken towards the smaller partner (the higher Dice), so the result does not
    depend on label values. Both images without objects give 1.0; exactly one without objects gives 0.0.

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4
    >>> object_dice(pred, gt)  # 0.5 * ((4*1 + 4*2/3) / 8 + (4*1 + 2*2/3 + 3*0) / 9) = 77/108
    0.7129629629629629
    >>> object_dice(gt, gt), object_dice(np.zeros_like(gt), gt)
    (1.0, 0.0)
    """
    return _object_dice(overlap_table(pred_labels, gt_labels))


def _mean_object_dice(t: Overlap) -> float:
    n_g = t.gt_areas.size
    if n_g == 0:
        return 1.0 if t.pred_areas.size == 0 else 0.0
    # best partner = largest overlap; on equal overlap the smaller partner (higher Dice)
    best = first_per_group(t.gi, -t.inter, t.pred_areas[t.pj])
    dice = 2 * t.inter[best] / (t.gt_areas[t.gi[best]] + t.pred_areas[t.pj[best]])
    return float(dice.sum() / n_g)  # GT objects overlapping nothing add 0


def mean_object_dice(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """Mean object Dice ("mDice") of Nishimura et al. [4]_, as Scribble2Label [5]_ reports it.

    ``(1 / n_G) * sum_i Dice(G_i, S*(G_i))``, the unweighted mean over ground-truth objects, with
    ``S*(G_i)`` the predicted object overlapping ``G_i`` most. A ground-truth object overlapping nothing
    scores 0; predicted objects overlapping nothing are not counted (unlike :func:`object_dice`).

    Notes
    -----
    Ties in overlap are broken towards the smaller partner (the higher Dice), as in :func:`object_dice`,
    so the result does not depend on label values. Without ground-truth objects the result is 1.0 if
    there are no predicted objects either, else 0.0.

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4
    >>> mean_object_dice(pred, gt)  # (2*4/(4+4) + 2*2/(4+2)) / 2 = (1 + 2/3) / 2; S4 is not counted
    0.8333333333333333

    A prediction merging both squares (8 px) is each one's partner:

    >>> mean_object_dice((gt > 0).astype(int), gt)  # (2*4/(4+8) + 2*4/(4+8)) / 2
    0.6666666666666666
    >>> mean_object_dice(np.zeros_like(gt), np.zeros_like(gt)), mean_object_dice(pred, np.zeros_like(gt))
    (1.0, 0.0)
    """
    return _mean_object_dice(overlap_table(pred_labels, gt_labels))


def _aji(t: Overlap) -> float:
    n_g, n_p = t.gt_areas.size, t.pred_areas.size
    if n_g == 0 and n_p == 0:
        return 1.0
    best = first_per_group(t.gi, -t.iou, -t.inter, t.pj)
    c = t.inter[best].sum()
    unmatched_gt = np.ones(n_g, bool)
    unmatched_gt[t.gi[best]] = False
    unused_pred = np.ones(n_p, bool)
    unused_pred[t.pj[best]] = False
    u = t.union[best].sum() + t.gt_areas[unmatched_gt].sum() + t.pred_areas[unused_pred].sum()
    return float(c / u)


def aji(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """Aggregated Jaccard Index of Kumar et al. [2]_, ``C / U``.

    For each ground-truth object ``G_i`` the predicted object ``S_j`` of **largest IoU** with it is
    chosen and ``|G_i & S_j|`` is added to ``C``, ``|G_i | S_j|`` to ``U``. Predicted objects never
    chosen add their area to ``U``.

    Notes
    -----
    Choices, following Kumar et al.'s definition and the ``AJI_fast`` function of the point-supervision
    code of Qu et al. that the weak-supervision literature reports with:

    * The partner is the predicted object of maximal IoU, not maximal intersection, as in Kumar's
      Algorithm 1. Ties in IoU go to the larger intersection, then to the smaller predicted label.
      Only this last rule depends on label values; it matters only for exact ties in both IoU and
      intersection.
    * A predicted object may be chosen by several ground-truth objects (the original AJI, not the
      one-to-one "AJI+"); its pixels then count in ``U`` more than once, penalising merges.
    * A ground-truth object that overlaps no prediction adds just its own area to ``U`` and marks no
      prediction as used (``AJI_fast`` takes ``argmax`` of an all-zero IoU row, which picks the first
      predicted object, and so can count that object's area twice).
    * Both images without objects give 1.0; otherwise an image without objects gives 0.0.

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4
    >>> aji(pred, gt)  # C = 4 + 2; U = 4 + 4 + 3 (unused false object)
    0.5454545454545454

    A merge is punished: one prediction covering both squares is chosen twice.

    >>> aji((gt > 0).astype(int), gt)  # C = 4 + 4, U = 8 + 8
    0.5
    >>> aji(np.zeros_like(gt), np.zeros_like(gt)), aji(np.zeros_like(gt), gt), aji(gt, np.zeros_like(gt))
    (1.0, 0.0, 0.0)
    """
    return _aji(overlap_table(pred_labels, gt_labels))


def _panoptic_quality(t: Overlap, iou_threshold: float) -> dict:
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    n_g, n_p = t.gt_areas.size, t.pred_areas.size
    if n_g == 0 and n_p == 0:
        return {"dq": 1.0, "sq": 1.0, "pq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    cand = iou_matches(t, iou_threshold)
    tp = int(cand.size)
    sq = float(t.iou[cand].sum() / tp) if tp else 0.0
    dq = tp / (tp + 0.5 * (n_p - tp) + 0.5 * (n_g - tp))
    return {"dq": dq, "sq": sq, "pq": dq * sq, "tp": tp, "fp": n_p - tp, "fn": n_g - tp}


def panoptic_quality(pred_labels: np.ndarray, gt_labels: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Panoptic quality of Kirillov et al. [3]_: ``PQ = DQ * SQ``.

    A predicted and a ground-truth object match when their IoU is **strictly** greater than
    ``iou_threshold``. ``DQ = TP / (TP + FP/2 + FN/2)``; ``SQ`` is the mean IoU of the matches.

    Parameters
    ----------
    iou_threshold : float
        In ``[0, 1)``. At 0.5 or above matches are unique by construction; below 0.5 an object may
        exceed it with several partners, and a one-to-one matching with the most matches and then the
        largest total IoU is used.

    Returns
    -------
    dict
        ``dq``, ``sq``, ``pq`` (float) and ``tp``, ``fp``, ``fn`` (int).

    Notes
    -----
    Without matches ``SQ`` is 0.0. Both images without objects give ``dq = sq = pq = 1.0`` (a perfect
    empty answer, consistent with the other metrics here; the formula itself is 0/0).

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4

    The half-covered square has IoU exactly 0.5, which is not a match:

    >>> panoptic_quality(pred, gt)  # DQ = 1 / (1 + 2/2 + 1/2)
    {'dq': 0.4, 'sq': 1.0, 'pq': 0.4, 'tp': 1, 'fp': 2, 'fn': 1}
    >>> low = panoptic_quality(pred, gt, iou_threshold=0.4)  # DQ = 2 / 2.5, SQ = (1 + 0.5) / 2
    >>> low["tp"], low["fp"], low["fn"], low["dq"], low["sq"], round(low["pq"], 12)
    (2, 1, 0, 0.8, 0.75, 0.6)
    """
    return _panoptic_quality(overlap_table(pred_labels, gt_labels), float(iou_threshold))


def evaluate_instances(pred_labels: np.ndarray, gt_labels: np.ndarray, *, radius_px: float) -> dict:
    """All metrics of a predicted instance label image against a ground-truth one, in one flat dict.

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) ndarray of int
        Instance label images of the same shape, 0 = background.
    radius_px : float
        Matching radius, in pixels, of the detection metrics on object centroids.

    Returns
    -------
    dict
        ``pixel_accuracy``, ``pixel_f1``, ``pixel_iou``, ``object_dice``, ``mdice``
        (:func:`mean_object_dice`), ``aji``, ``pq``, ``dq``, ``sq`` (PQ at IoU > 0.5), ``precision``, ``recall``, ``f1`` (detection of centroids, see :func:`detection_scores`),
        and the counts ``n_pred``, ``n_gt`` — all plain Python numbers.

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4
    >>> scores = evaluate_instances(pred, gt, radius_px=1.0)
    >>> scores["aji"], scores["pq"], scores["precision"], scores["recall"]
    (0.5454545454545454, 0.4, 0.6666666666666666, 1.0)
    >>> scores["pixel_iou"], scores["mdice"]
    (0.5454545454545454, 0.8333333333333333)
    """
    p_index, p_areas, g_index, g_areas, t = compact_pair(pred_labels, gt_labels)
    pq = _panoptic_quality(t, 0.5)
    shape = np.shape(gt_labels)  # the pair's common shape (checked)
    cents = [centroids_from_index(p_index, shape, p_areas), centroids_from_index(g_index, shape, g_areas)]
    det = detection_scores(cents[0], cents[1], radius_px)
    return {
        "pixel_accuracy": pixel_accuracy(p_index, g_index),
        "pixel_f1": pixel_f1(p_index, g_index),
        "pixel_iou": pixel_iou(p_index, g_index),
        "object_dice": _object_dice(t),
        "mdice": _mean_object_dice(t),
        "aji": _aji(t),
        "pq": pq["pq"],
        "dq": pq["dq"],
        "sq": pq["sq"],
        "precision": det["precision"],
        "recall": det["recall"],
        "f1": det["f1"],
        "n_pred": int(t.pred_areas.size),
        "n_gt": int(t.gt_areas.size),
    }


def evaluate_points(pred_labels_or_points: np.ndarray, gt_points: np.ndarray, *, radius_px: float) -> dict:
    """Detection metrics against point-only ground truth (e.g. expert clicks).

    Parameters
    ----------
    pred_labels_or_points : ndarray
        Either predicted points, shape ``(n, 2)`` as ``(row, col)`` pixels, or a 2-D instance label image
        whose object centroids are used. A 2-D array with exactly two columns is read as points.
    gt_points : (m, 2) array_like
        Ground-truth ``(row, col)`` points in pixels.
    radius_px : float
        Matching radius in pixels (inclusive).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn`` as in :func:`detection_scores`.

    Examples
    --------
    >>> gt = np.zeros((6, 6), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 2
    >>> pred = np.zeros((6, 6), int); pred[0:2, 0:2] = 5; pred[3, 3:5] = 9; pred[0:3, 5] = 4
    >>> evaluate_points(pred, [[0.5, 0.5], [3.5, 3.5]], radius_px=1.0)["recall"]
    1.0
    >>> evaluate_points([[0.5, 0.5]], [[0.5, 0.5], [3.5, 3.5]], radius_px=1.0)["recall"]
    0.5
    """
    arr = np.asarray(pred_labels_or_points)
    if arr.size == 0 or (arr.ndim == 2 and arr.shape[1] == 2):
        pred_points = _as_points(arr, "pred points")
    elif arr.ndim == 2:
        index, areas = compact_labels(arr)
        pred_points = centroids_from_index(index, arr.shape, areas)
    else:
        raise ValueError(f"expected (n, 2) points or a 2-D label image, got shape {arr.shape}")
    return detection_scores(pred_points, gt_points, radius_px)
