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
