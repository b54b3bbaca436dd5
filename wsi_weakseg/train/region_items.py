"""Training and validation items of the regions recipe: an image at the model's pixel size and its in/out points.

Each spec item's ``region_points`` (:mod:`wsi_weakseg.weak.region_points`) are read through
:func:`~wsi_weakseg.train.dataset.read_item` (a plain image whole, a slide over the bounding box of its
annotated region) and rasterised as squares of side ``2 k + 1`` working pixels, ``k = round(point_radius_um /
mpp)`` (the paper expands each point into a 3 x 3 square): 1 in, 0 out, 2 not annotated (the weak-label
encoding of :func:`~wsi_weakseg.train.losses.partial_ce`). Validation items carry the target mask (the spec's
``labels``, non-zero = target, for Dice) and, when they name ``region_points``, the same point map (for the
validation pCE that decides when the recipe recomputes ``u``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .dataset import IGNORE

log = logging.getLogger(__name__)


@dataclass
class RegionItem:
    """One training image at the working pixel size with its in/out points.

    Attributes
    ----------
    name : str
    image : ndarray (H, W, 3) uint8
    points : ndarray (H, W) uint8
        1 in-point square, 0 out-point square, 2 not annotated.
    annotated : ndarray (H, W) uint8
        1 inside the annotated region (all of a plain image without one).
    in_rc, out_rc : ndarray (n, 2) int64
        The points' working pixels (row, col): where the contrast maps are anchored.
    """

    name: str
    image: np.ndarray
    points: np.ndarray
    annotated: np.ndarray
    in_rc: np.ndarray
    out_rc: np.ndarray

    def targets(self) -> dict[str, np.ndarray]:
        return {"points": self.points, "annotated": self.annotated}


@dataclass
class RegionEvalItem:
    """One validation image at the working pixel size: its target mask and/or its point map."""

    name: str
    image: np.ndarray
    mask: np.ndarray | None
    points: np.ndarray | None


def point_map(shape: tuple[int, int], in_rc: np.ndarray, out_rc: np.ndarray, half: int,
              annotated: np.ndarray | None = None) -> np.ndarray:
    """The pCE label map: squares of side ``2 half + 1`` around the points (in drawn last), 2 elsewhere.

    Examples
    --------
    >>> point_map((3, 5), np.array([[1, 1]]), np.array([[1, 4]]), 1).tolist()
    [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    """
    out = np.full(shape, IGNORE, np.uint8)
    for value, rcs in ((0, out_rc), (1, in_rc)):
        for r, c in np.asarray(rcs, np.int64).reshape(-1, 2):
            out[max(r - half, 0) : r + half + 1, max(c - half, 0) : c + half + 1] = value
    if annotated is not None:
        out[annotated == 0] = IGNORE
    return out


def _pixels(rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel-centre (row, col) coordinates -> the (row, col) indices of the pixels holding them."""
    idx = np.floor(np.asarray(rc, np.float64).reshape(-1, 2) + 0.5).astype(np.int64)
    return np.clip(idx, 0, np.array(shape) - 1)


def _read(spec_item, mpp: float, radius_um: float, need_points: bool):
    """Read one spec item: (ReadItem, in pixels, out pixels, point map or None)."""
    from ..weak.points import PointSet
    from ..weak.region_points import load_item_region_points
    from .dataset import read_item

    if spec_item.region_points is None:
        if need_points:
            load_item_region_points(spec_item)  # raises the ConfigError that names the missing key
        r = read_item(spec_item, mpp, points=PointSet(np.zeros((0, 2)), ()))
        return r, None, None, None
    pts = load_item_region_points(spec_item)
    both = PointSet(np.concatenate([pts.xy_in, pts.xy_out]), ("in",) * len(pts.xy_in) + ("out",) * len(pts.xy_out),
                    regions=pts.regions)
    r = read_item(spec_item, mpp, points=both)
    shape = r.image.shape[:2]
    in_rc, out_rc = _pixels(r.points_rc[: len(pts.xy_in)], shape), _pixels(r.points_rc[len(pts.xy_in):], shape)
    half = round(radius_um / r.mpp)
    return r, in_rc, out_rc, point_map(shape, in_rc, out_rc, half, r.annotated)


def build_region_items(spec_items: Sequence, cfg: Mapping) -> tuple[list[RegionItem], list[dict]]:
    """Training items of ``spec_items`` (each must name ``region_points``) and a per-item summary (for the card)."""
    mpp, radius = float(cfg["data"]["mpp"]), float(cfg["regions"]["point_radius_um"])
    items, summary = [], []
    for spec_item in spec_items:
        r, in_rc, out_rc, points = _read(spec_item, mpp, radius, need_points=True)
        items.append(RegionItem(r.name, r.image, points, r.annotated, in_rc, out_rc))
        summary.append({"name": r.name, "source": str(spec_item.image), "source_mpp": r.source_mpp, "mpp": r.mpp,
                        "shape": list(r.image.shape[:2]), "in_points": len(in_rc), "out_points": len(out_rc),
                        "dropped_outside": r.info["dropped_outside"]})
        log.info("%s: %d in / %d out points, %dx%d working px", r.name, len(in_rc), len(out_rc), *r.image.shape[1::-1])
    return items, summary


def build_region_eval_items(spec_items: Sequence, cfg: Mapping) -> list[RegionEvalItem]:
    """Validation items: the target mask from ``labels`` (non-zero = target) and the points, when given."""
    mpp, radius = float(cfg["data"]["mpp"]), float(cfg["regions"]["point_radius_um"])
    out = []
    for spec_item in spec_items:
        if spec_item.labels is None and spec_item.region_points is None:
            raise ConfigError(f"{spec_item.image}: a validation item of the regions recipe needs 'labels' (the target "
                              "mask, for Dice) or 'region_points' (for the validation pCE), or both")
        r, _, _, points = _read(spec_item, mpp, radius, need_points=False)
        mask = None if r.labels is None else r.labels > 0
        out.append(RegionEvalItem(r.name, r.image, mask, points))
    if not out:
        log.warning("no validation items: training without validation; u is recomputed every epoch and the last "
                    "epoch's net is shipped")
    return out
