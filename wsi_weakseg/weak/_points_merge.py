"""Duplicate merging of :mod:`wsi_weakseg.weak.points` (:func:`merge_duplicates`).

Import from :mod:`wsi_weakseg.weak.points`; this module only holds part of its implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from ._points_model import GENERIC_CLASSES


def _class_rank(name: str, generic: set[str]) -> int:
    """0 for a specific class, 1 for a generic nucleus class, 2 for unclassified."""
    if not name:
        return 2
    return 1 if name.casefold() in generic else 0


def merge_duplicates(
    xy: np.ndarray,
    classes: Sequence[str],
    radius: float,
    generic_classes: Sequence[str] = GENERIC_CLASSES,
) -> tuple[np.ndarray, int]:
    """Indices of the points kept after merging points closer than ``radius``.

    Greedy and deterministic: points are visited by class rank (specific class, then generic
    nucleus class, then unclassified), ties in input order; each point not yet absorbed is kept and
    absorbs every not-yet-absorbed point within ``radius`` (distance ``<= radius``) of it. A kept
    point keeps its own position and class. No chaining: a point is absorbed only by a kept point
    within ``radius`` of it.

    Parameters
    ----------
    xy : numpy.ndarray
        ``(n, 2)`` positions.
    classes : Sequence of str
        Class of each point (``""`` = unclassified).
    radius : float
        Merge distance in pixels, ``>= 0`` (0 merges identical positions only).
    generic_classes : Sequence of str
        Class names (case-insensitive) ranked below every other class.

    Returns
    -------
    keep : numpy.ndarray
        Indices of the kept points, ordered by the first input index of the group each one
        absorbed (so the output follows the order in which clicks first appear in the input).
    n_conflicts : int
        Absorbed points whose specific class differed from the kept point's specific class.

    Examples
    --------
    >>> xy = np.array([[5.0, 5.0], [20.0, 5.0], [5.0, 5.0], [20.5, 5.0]])
    >>> keep, _ = merge_duplicates(xy, ["Nucleus", "Nucleus", "Epithelial", "Fibroblast"], 1.0)
    >>> keep.tolist()  # the specific classes (indices 2, 3) win over "Nucleus"
    [2, 3]
    """
    if not (radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"merge radius must be a finite number >= 0, got {radius}")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    if n < 2:
        return np.arange(n), 0
    pairs = cKDTree(xy).query_pairs(r=radius, output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(n), 0
    generic = {g.casefold() for g in generic_classes}
    rank = np.array([_class_rank(c, generic) for c in classes], dtype=np.int64)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    starts = np.searchsorted(both[:, 0], np.arange(n + 1))
    absorbed = np.zeros(n, dtype=bool)
    keep: list[tuple[int, int]] = []  # (first input index of the group, kept index)
    conflicts = 0
    for i in np.lexsort((np.arange(n), rank)):
        if absorbed[i]:
            continue
        absorbed[i] = True
        first = int(i)
        for j in both[starts[i] : starts[i + 1], 1]:
            if not absorbed[j]:
                absorbed[j] = True
                first = min(first, int(j))
                if rank[i] == 0 and rank[j] == 0 and classes[i] != classes[j]:
                    conflicts += 1
        keep.append((first, int(i)))
    return np.array([k for _, k in sorted(keep)], dtype=np.int64), conflicts
