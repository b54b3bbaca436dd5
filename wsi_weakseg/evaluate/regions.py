"""Metrics of tissue-region masks (issue 18): pixel Dice, pixel IoU and the GlaS object Dice.

A region model predicts a binary mask (e.g. gland / not gland); the ground truth is a binary mask. Pixel Dice
and IoU are :func:`~wsi_weakseg.evaluate.metrics.pixel_f1` and :func:`~wsi_weakseg.evaluate.metrics.pixel_iou`.
Object Dice is :func:`~wsi_weakseg.evaluate.metrics.object_dice` on the 4-connected components of each mask:
the GlaS challenge scores each gland of its per-gland label image, and a binary mask has lost that numbering,
so touching glands count as one object here (on both sides alike).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .metrics import object_dice, pixel_f1, pixel_iou

#: The keys :func:`evaluate_regions` returns, all means over images in training validation.
REGION_KEYS = ("dice", "iou", "object_dice")


def evaluate_regions(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Pixel Dice, pixel IoU and object Dice of a predicted binary mask against a ground-truth one (non-zero = target).

    Examples
    --------
    Ground truth: two 2x2 squares; prediction: the first square and a 1x2 half of the second.

    >>> gt = np.zeros((5, 5), int); gt[0:2, 0:2] = 1; gt[3:5, 3:5] = 255
    >>> pred = np.zeros((5, 5), bool); pred[0:2, 0:2] = True; pred[3, 3:5] = True
    >>> r = evaluate_regions(pred, gt)
    >>> r["dice"], r["iou"]  # 2 * 6 / (6 + 8), 6 / 8
    (0.8571428571428571, 0.75)
    >>> round(r["object_dice"], 6)  # 0.5 * ((4 * 1 + 4 * 2/3) / 8 + (4 * 1 + 2 * 2/3) / 6)
    0.861111
    """
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    return {"dice": pixel_f1(p, g), "iou": pixel_iou(p, g), "object_dice": object_dice(ndi.label(p)[0], ndi.label(g)[0])}


def labels_at_level0(labels: np.ndarray, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A working-grid mask or label map on the level-0 grid of ``shape``: what the written polygons cover there.

    Working pixel ``(i, j)`` spans level-0 ``[j s, (j + 1) s) x [i s, (i + 1) s)`` (``s = scale``, the working
    pixel size in level-0 pixels; QuPath's corner convention), so level-0 pixel ``(y, x)`` takes the working pixel
    under its centre, ``floor((x + 0.5) / s)``. Centres past the working grid (the strip of less than one working
    pixel the grid leaves at the right and bottom) are 0: no polygon reaches there.

    Examples
    --------
    >>> labels_at_level0(np.array([[1, 2]]), (2, 4), 2.0).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2]]
    >>> labels_at_level0(np.array([[1, 2]]), (1, 6), 2.5).tolist()  # centres 0.5 ... 5.5 -> 0 0 1 1 1 past
    [[1, 1, 2, 2, 2, 0]]
    """
    from ..slide.view import level0_to_grid

    labels = np.asarray(labels)
    cols, rows = level0_to_grid((0, 0), scale, np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5)
    rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    padded = np.zeros((labels.shape[0] + 1, labels.shape[1] + 1), labels.dtype)
    padded[:-1, :-1] = labels
    return padded[np.minimum(rows, labels.shape[0])[:, None], np.minimum(cols, labels.shape[1])[None, :]]
