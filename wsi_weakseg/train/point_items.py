"""Training items of the cks recipe: an image at the model's pixel size and a Gaussian heatmap of its clicks.

The recipe needs the clicks themselves, in every augmented patch. They travel as a heatmap (a Gaussian of
``cks.point_sigma_um`` at each click) through the loop's shared patch sampler, which zooms, flips and rotates it
with the image, and come back as the heatmap's peaks (:func:`~wsi_weakseg.train.cks_losses.points_from_heatmap`).
Images and clicks are read as for the points recipe (:func:`~wsi_weakseg.train.dataset.read_item`: the same
points, annotated regions and working grid); no Voronoi or cluster labels are derived.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..weak.centres import centre_heatmap

log = logging.getLogger(__name__)


@dataclass
class PointItem:
    """One training image with its click heatmap.

    Attributes
    ----------
    name : str
    image : ndarray (H, W, 3) uint8
    centre : ndarray (H, W) float32
        1 at each click, a Gaussian of the distance to the nearest click around it.
    annotated : ndarray (H, W) uint8
        1 inside the annotated regions (where every nucleus was clicked), 0 outside.
    """

    name: str
    image: np.ndarray
    centre: np.ndarray
    annotated: np.ndarray

    def targets(self) -> dict[str, np.ndarray]:
        return {"centre": self.centre, "annotated": self.annotated}


def build_point_items(spec_items: Sequence, cfg: Mapping) -> tuple[list[PointItem], list[dict]]:
    """Training items of ``spec_items`` (image + points) and a per-item summary (for the card)."""
    from .dataset import read_item

    items, summary = [], []
    for spec_item in spec_items:
        r = read_item(spec_item, float(cfg["data"]["mpp"]))
        heat = centre_heatmap(r.points_rc, r.image.shape[:2], sigma=float(cfg["cks"]["point_sigma_um"]) / r.mpp)
        items.append(PointItem(r.name, r.image, heat.astype(np.float32), r.annotated.astype(np.uint8)))
        summary.append({"name": r.name, "source": str(spec_item.image), "source_mpp": r.source_mpp, "mpp": r.mpp,
                        "shape": list(r.image.shape[:2]), **r.info})
        log.info("%s: %d points, %dx%d working px", r.name, len(r.points_rc), r.image.shape[1], r.image.shape[0])
    return items, summary
