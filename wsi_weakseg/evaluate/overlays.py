"""Error overlays of ``wsi-weakseg evaluate --overlays DIR``: where a prediction matches, misses and merges.

Categories, on the overlap table the metrics use (:func:`~wsi_weakseg.evaluate._overlap.overlap_table`) and
the matching of panoptic quality (:func:`~wsi_weakseg.evaluate._overlap.iou_matches`, IoU **strictly** above
0.5, so each object has at most one partner):

* **merge** — a predicted nucleus ``P`` that covers at least half of each of two or more ground-truth
  nuclei: ``#{G : |P ∩ G| >= 0.5 |G|} >= 2``. A merge is drawn as a merge even when it also matches one of
  them at IoU > 0.5; the ground-truth nuclei it covers by half or more are not drawn as misses.
* **match** (true positive) — a predicted nucleus matched to a ground-truth nucleus, and not a merge.
* **false positive** — a predicted nucleus with no match, and not a merge.
* **miss** — a ground-truth nucleus with no match, and not covered by half or more by a merge.

So ``match`` + ``false positive`` + ``merge`` = predicted nuclei, and the counts of ``match`` and ``miss``
equal PQ's ``tp`` and ``fn`` when there is no merge.

Each object is drawn as its inner outline (:func:`~wsi_weakseg.viz.outline_mask`, 1 px), predicted objects
for match / false positive / merge and ground-truth objects for misses, in the Okabe-Ito colours of
:data:`COLOURS`; misses are drawn first, so a predicted outline wins where two cross. Under the outlines lies
the RGB image when there is one (model mode); in file mode, where evaluate never sees the image, a grey
stand-in: ground-truth nuclei mid grey on light grey (:data:`BACKGROUND`). A legend band with the count of
each category is added below the picture (rows ``0..H-1`` are the picture, pixel for pixel).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..viz import OKABE_ITO, outline_mask, paint, save_png
from ._overlap import compact_pair, iou_matches

#: Category -> (legend text, RGB colour), in drawing order.
COLOURS = {
    "miss": ("miss", OKABE_ITO["blue"]),
    "fp": ("false positive", OKABE_ITO["vermillion"]),
    "tp": ("match (IoU > 0.5)", OKABE_ITO["green"]),
    "merge": ("merge (>= 2 nuclei half covered)", OKABE_ITO["yellow"]),
}
#: File-mode stand-in for the image: (background grey, ground-truth nucleus grey).
BACKGROUND = (224, 176)
MERGE_COVER = 0.5  # fraction of a ground-truth nucleus a merge must cover
_LEGEND_PAD = 4


class Categories(NamedTuple):
    """Per-object categories on the compacted label indices (object ``k`` has index ``k + 1``)."""

    pred_index: np.ndarray  # (H, W) int64, 0 = background, 1..n_pred
    gt_index: np.ndarray  # (H, W) int64, 0 = background, 1..n_gt
    tp: np.ndarray  # (n_pred,) bool
    fp: np.ndarray  # (n_pred,) bool
    merge: np.ndarray  # (n_pred,) bool
    miss: np.ndarray  # (n_gt,) bool

    def counts(self) -> dict[str, int]:
        """Number of objects per category."""
        return {k: int(getattr(self, k).sum()) for k in COLOURS}


def categorize(pred_labels: np.ndarray, gt_labels: np.ndarray) -> Categories:
    """Sort every object of a prediction / ground-truth pair into match, false positive, merge or miss.

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) ndarray of int
        Instance label images of the same shape, 0 = background.

    Returns
    -------
    Categories
        See the module docstring for the definitions.
    """
    p_index, p_areas, g_index, g_areas, t = compact_pair(pred_labels, gt_labels)
    matched = iou_matches(t, 0.5)
    p_matched = np.zeros(p_areas.size, bool)
    p_matched[t.pj[matched]] = True
    g_matched = np.zeros(g_areas.size, bool)
    g_matched[t.gi[matched]] = True
    covers = t.inter >= MERGE_COVER * t.gt_areas[t.gi]
    merge = np.bincount(t.pj[covers], minlength=p_areas.size) >= 2
    in_merge = np.zeros(g_areas.size, bool)
    in_merge[t.gi[covers & merge[t.pj]]] = True
    shape = gt_labels.shape
    return Categories(p_index.reshape(shape), g_index.reshape(shape), p_matched & ~merge, ~p_matched & ~merge,
                      merge, ~g_matched & ~in_merge)


def _outline_of(index: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Inner outline pixels of the objects flagged in ``chosen`` (index ``k + 1`` is object ``k``)."""
    lut = np.concatenate([[False], chosen])
    return outline_mask(index) & lut[index]


def category_outlines(cats: Categories) -> dict[str, np.ndarray]:
    """Category -> (H, W) bool mask of its objects' outlines (misses on the ground truth, the rest on the prediction)."""
    return {k: _outline_of(cats.gt_index if k == "miss" else cats.pred_index, getattr(cats, k)) for k in COLOURS}


def stand_in(gt_labels: np.ndarray) -> np.ndarray:
    """File-mode background: ground-truth nuclei in mid grey on light grey, (H, W, 3) uint8."""
    grey = np.where(np.asarray(gt_labels) > 0, BACKGROUND[1], BACKGROUND[0]).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def legend_band(width: int, counts: dict[str, int]) -> np.ndarray:
    """White band with a colour swatch, name and count per category, wrapped to ``width`` px (widened if needed)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(f"{text}: {counts.get(k, 0)}", colour) for k, (text, colour) in COLOURS.items()]
    sizes = [probe.textbbox((0, 0), e[0], font=font) for e in entries]
    line_h = max(b[3] - b[1] for b in sizes) + 2 * _LEGEND_PAD
    item_w = [line_h + (b[2] - b[0]) + 3 * _LEGEND_PAD for b in sizes]
    width = max(width, max(item_w))
    spots, x, y = [], 0, 0
    for w in item_w:
        if x and x + w > width:
            x, y = 0, y + line_h
        spots.append((x, y))
        x += w
    band = Image.new("RGB", (width, y + line_h), "white")
    draw = ImageDraw.Draw(band)
    for (text, colour), (x, y), box in zip(entries, spots, sizes):
        s = line_h - 2 * _LEGEND_PAD
        draw.rectangle([x + _LEGEND_PAD, y + _LEGEND_PAD, x + _LEGEND_PAD + s, y + _LEGEND_PAD + s],
                       fill=tuple(colour), outline="black")
        draw.text((x + 2 * _LEGEND_PAD + s, y + _LEGEND_PAD - box[1]), text, fill="black", font=font)
    return np.asarray(band)


def overlay(pred_labels: np.ndarray, gt_labels: np.ndarray, image: np.ndarray | None = None
            ) -> tuple[np.ndarray, dict[str, int]]:
    """The overlay picture of one pair and its category counts.

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) ndarray of int
        Instance label images of the same shape.
    image : (H, W, 3) uint8 ndarray, optional
        RGB image under the outlines; default the grey stand-in of :func:`stand_in`.

    Returns
    -------
    rgb : (H + band, max(W, legend), 3) uint8 ndarray
        Rows ``0..H-1``, columns ``0..W-1``: the picture; below it the legend; any widening is white.
    counts : dict
        Objects per category (``tp``, ``fp``, ``merge``, ``miss``).
    """
    cats = categorize(pred_labels, gt_labels)
    h, w = cats.gt_index.shape
    if image is None:
        rgb = stand_in(gt_labels)
    else:
        rgb = np.asarray(image)[..., :3]
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"overlay image must be ({h}, {w}, 3) uint8, got {rgb.shape} {rgb.dtype}")
    for k, mask in category_outlines(cats).items():
        rgb = paint(rgb, mask, COLOURS[k][1])
    counts = cats.counts()
    band = legend_band(w, counts)
    out = np.full((h + band.shape[0], band.shape[1], 3), 255, np.uint8)
    out[:h, :w] = rgb
    out[h:] = band
    return out, counts


def write_overlay(path: str | os.PathLike[str], pred_labels: np.ndarray, gt_labels: np.ndarray,
                  image: np.ndarray | None = None) -> dict[str, int]:
    """Write :func:`overlay` as PNG (atomically) at ``path``; return the category counts."""
    rgb, counts = overlay(pred_labels, gt_labels, image)
    save_png(Path(path), rgb)
    return counts


def prepare_dir(path: str | os.PathLike[str]) -> Path:
    """The overlay folder, created if absent; :class:`~wsi_weakseg.errors.ConfigError` when it cannot be one."""
    from ..errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--overlays {path}: exists and is not a folder; name a folder (it is created if absent)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--overlays {path}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--overlays {path}: folder is not writable")
    return path
