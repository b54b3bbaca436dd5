"""What a ``regions`` model card holds: one probability map of a tissue class, turned into region annotations.

A regions card (``model_type: "regions"``) names a ResNet34-UNet (``architecture: "resnet34-unet"``) with one
head, ``heads: ["region"]``, whose map is the probability of the card's one class (``classes: [{"name":
"Gland", "color": [r, g, b]}]``; the background is implicit). It runs at a low pixel size (1-2 µm/px), has no
mask window (``window_um`` stays ``None``) and reads these thresholds (:data:`REGION_THRESHOLDS`):

``region`` (required)
    Probability at or above which a working pixel belongs to the class.
``min_region_area_um2`` (required)
    Connected regions (8-connected) smaller than this are dropped.
``min_hole_area_um2`` (default 0: every hole is kept)
    Holes (4-connected background enclosed by a region) smaller than this are filled.
``simplify_um`` (default 0: exact pixel-edge outlines)
    Douglas-Peucker tolerance of the written outlines, in µm.

The engine side is :mod:`wsi_weakseg.engine.region_model`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .card import ModelCard

#: Threshold keys of a regions card and their defaults (``None``: the card must give it).
REGION_THRESHOLDS: dict[str, float | None] = {
    "region": None,
    "min_region_area_um2": None,
    "min_hole_area_um2": 0.0,
    "simplify_um": 0.0,
}
#: Keys a regions card must give.
REQUIRED_REGION_THRESHOLDS = tuple(k for k, v in REGION_THRESHOLDS.items() if v is None)
REGION_HEADS = ["region"]


def region_thresholds(card: ModelCard) -> dict[str, float]:
    """The card's region thresholds with the defaults of the optional keys filled in."""
    return {k: float(card.thresholds.get(k, default)) for k, default in REGION_THRESHOLDS.items()}


def region_card_problems(card: ModelCard) -> list[str]:
    """What is wrong with a ``regions`` card (empty when nothing is).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> card = SimpleNamespace(architecture="resnet34-unet", window_um=None, heads=["region"],
    ...                        classes=[{"name": "Gland", "color": [1, 2, 3]}],
    ...                        thresholds={"region": 1.5, "min_region_area_um2": 100})
    >>> region_card_problems(card)
    ['threshold region must be a probability in (0, 1), got 1.5']
    """
    problems = []
    if card.architecture != "resnet34-unet":
        problems.append(f"model_type 'regions' needs architecture 'resnet34-unet', got {card.architecture!r}")
    if card.window_um is not None:
        problems.append("window_um is for model_type 'detect-segment' only; a regions card leaves it null")
    if list(card.heads) != REGION_HEADS:
        problems.append(f"a regions card has heads {REGION_HEADS}, got {card.heads}")
    if len(card.classes) != 1:
        problems.append("a regions card has one class (the target; background is implicit), got "
                        f"{len(card.classes)}")
    return problems + _threshold_problems(card.thresholds)


def _threshold_problems(thresholds: dict[str, Any]) -> list[str]:
    """Range checks of the region thresholds that are present (missing required keys are the card's check)."""
    problems = []
    p = thresholds.get("region")
    if p is not None and not (_number(p) and 0 < p < 1):
        problems.append(f"threshold region must be a probability in (0, 1), got {p!r}")
    for key in ("min_region_area_um2", "min_hole_area_um2", "simplify_um"):
        v = thresholds.get(key, 0.0)
        if not (_number(v) and v >= 0):
            problems.append(f"threshold {key} must be a number >= 0, got {v!r}")
    return problems


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
