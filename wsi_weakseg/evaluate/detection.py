"""Detection metrics on points: one-to-one matching within a radius, and instance centroids."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ._overlap import compact_labels, one_to_one


def instance_centroids(labels: np.ndarray) -> np.ndarray:
    """Centroids of the objects of a 2-D label image.

    Parameters
    ----------
    labels : (H, W) ndarray of int or bool
        Instance label image, 0 = background. Labels need not be consecutive.

    Returns
    -------
    (n, 2) ndarray of float64
        ``(row, col)`` centroid of each object in pixels (pixel centres at integer coordinates), in
        increasing label order. An image without objects gives shape ``(0, 2)``.

    Examples
    --------
    >>> labels = np.array([[0, 7, 7],
    ...                    [3, 0, 0]])
    >>> instance_centroids(labels)  # label 3 first, then label 7
    array([[1. , 0. ],
           [0. , 1.5]])
    >>> instance_centroids(np.zeros((2, 2), int)).shape
    (0, 2)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    index, areas = compact_labels(labels)
    return centroids_from_index(index, labels.shape, areas)


def centroids_from_index(index: np.ndarray, shape: tuple[int, int], areas: np.ndarray) -> np.ndarray:
    """Centroids from a flat compacted label index (see ``compact_labels``)."""
    n = areas.size
    if n == 0:
        return np.zeros((0, 2))
    fg = np.flatnonzero(index)
    rows, cols = np.divmod(fg, shape[1])
    obj = index[fg]
    sum_r = np.bincount(obj, weights=rows, minlength=n + 1)[1:]
    sum_c = np.bincount(obj, weights=cols, minlength=n + 1)[1:]
    return np.column_stack([sum_r, sum_c]) / areas[:, None]


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{name} must be finite")
    return pts


def detection_scores(pred_points: np.ndarray, gt_points: np.ndarray, radius: float) -> dict:
    """Precision, recall and F1 of detected points, matched one-to-one within a radius.

    Parameters
    ----------
    pred_points, gt_points : (n, 2) and (m, 2) array_like of float
        Point coordinates, e.g. ``(row, col)``, in the same units as ``radius`` (the caller converts µm
        to pixels). Empty arrays of any shape with size 0 are accepted.
    radius : float
        Largest distance, inclusive, at which a prediction can match a ground-truth point.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (float) and ``tp``, ``fp``, ``fn`` (int).

    Notes
    -----
    Each prediction matches at most one ground-truth point and vice versa. Among all such matchings
    with every pair at distance ``<= radius``, the one with the most pairs is taken and, among those,
    the one of least total distance (``scipy.optimize.linear_sum_assignment`` on each connected
    component of the candidate graph, infeasible pairs given a cost above any feasible total and
    dropped). This is never worse than greedy nearest-first matching, which can lose matches.

    A distance exactly equal to ``radius`` is a match. Conventions when a set is empty: both empty
    gives precision = recall = F1 = 1.0 (nothing to find, nothing falsely found); otherwise an empty
    prediction has precision 0.0 and an empty ground truth has recall 0.0, so F1 = 0.0.

    Examples
    --------
    Greedy matching would pair the prediction at ``(0, 0.9)`` with its nearest point ``(0, 0)``
    and leave ``(0, -1)`` unmatched; the optimal matching finds two pairs:

    >>> gt = [[0, 0], [0, 2]]
    >>> pred = [[0, 0.9], [0, -1.0]]
    >>> detection_scores(pred, gt, radius=1.2)["tp"]
    2

    The radius is inclusive (3-4-5 triangle):

    >>> detection_scores([[3, 4]], [[0, 0]], radius=5.0)["f1"]
    1.0
    >>> detection_scores([[3, 4]], [[0, 0]], radius=4.99)["f1"]
    0.0
    >>> detection_scores(np.zeros((0, 2)), np.zeros((0, 2)), radius=5.0)
    {'precision': 1.0, 'recall': 1.0, 'f1': 1.0, 'tp': 0, 'fp': 0, 'fn': 0}
    """
    radius = float(radius)
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be finite and >= 0, got {radius}")
    pred = _as_points(pred_points, "pred_points")
    gt = _as_points(gt_points, "gt_points")
    n_pred, n_gt = len(pred), len(gt)
    if n_pred == 0 and n_gt == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0, "fp": 0, "fn": 0}
    tp = 0
    if n_pred and n_gt:
        # query slightly beyond the radius, then decide with exactly computed distances
        pairs = cKDTree(pred).sparse_distance_matrix(
            cKDTree(gt), radius * (1 + 1e-9) + 1e-12, output_type="ndarray"
        )
        i, j = pairs["i"].astype(np.intp), pairs["j"].astype(np.intp)
        d = np.hypot(*(pred[i] - gt[j]).T)
        keep = d <= radius
        tp = int(one_to_one(i[keep], j[keep], d[keep]).size)
    return {
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_gt if n_gt else 0.0,
        "f1": 2 * tp / (n_pred + n_gt),
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_gt - tp,
    }
