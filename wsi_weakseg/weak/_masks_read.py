"""Reading drawn nuclei from QuPath GeoJSON (:func:`read_masks`, :func:`read_region`).

Import from :mod:`wsi_weakseg.weak.masks`, whose docstring states the rules; this module only holds part of its
implementation.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_weakseg.errors import GeoJSONError
from wsi_weakseg.io.geojson import feature_class_name, read_features

from ._points_read import _names, _summary, is_default_region

# The logger of the public module (configure "wsi_weakseg.weak.masks").
log = logging.getLogger("wsi_weakseg.weak.masks")

#: Default class of nucleus polygons.
NUCLEUS_MASK_CLASSES: tuple[str, ...] = ("Nucleus",)

_POLYGONS = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class MaskSet:
    """Drawn nuclei of one image and the region in which every nucleus was drawn, in level-0 pixels.

    Attributes
    ----------
    nuclei : tuple of shapely Polygon
        One polygon per nucleus, in file order (a ``MultiPolygon`` feature gives one nucleus per part).
    region : shapely geometry or None
        Union of the annotated-region polygons; ``None`` = the whole image is annotated.
    n_outside : int
        Nuclei wholly outside the region or the image (dropped, warned).
    n_crossing : int
        Nuclei partly outside the region (kept whole; only their part inside the region is supervised).
    n_repaired : int
        Invalid polygons (self-intersecting) repaired with ``make_valid`` (warned).
    n_overlapping : int
        Pairs of kept nuclei whose interiors overlap (warned; the shared pixels are left unlabelled).
    source : str
        The file read.
    """

    nuclei: tuple[BaseGeometry, ...]
    region: BaseGeometry | None
    n_outside: int = 0
    n_crossing: int = 0
    n_repaired: int = 0
    n_overlapping: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.nuclei)


def _parts(feature: dict[str, Any], path: Path) -> tuple[list[BaseGeometry], int]:
    """Single polygons of a feature (repaired when invalid) and whether a repair was needed (0/1)."""
    try:
        geom = shape(feature["geometry"])
    except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
        raise GeoJSONError(f"{path}: cannot build a polygon from feature {feature.get('id')!r}: {exc}") from exc
    repaired = 0
    if not geom.is_valid:
        geom, repaired = shapely.make_valid(geom), 1
    parts = [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon" and not p.is_empty and p.area > 0]
    return parts, repaired


def _class_set(classes: Sequence[str] | str | None) -> set[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [classes]
    return {str(c).casefold() for c in classes}


def _parse(path: Path, nuclei_wanted: set[str], region_wanted: set[str] | None):
    """Nucleus parts, region parts, repairs and the polygon classes seen, in one pass over the features."""
    nuclei: list[BaseGeometry] = []
    regions: list[BaseGeometry] = []
    repaired = 0
    seen: Counter[str] = Counter()
    for feature in read_features(path):  # NaN/infinite coordinates raise GeoJSONError there
        if feature["geometry"]["type"] not in _POLYGONS:
            continue
        name = feature_class_name(feature) or ""
        seen[name] += 1
        if name.casefold() in nuclei_wanted:
            parts, fixed = _parts(feature, path)
            nuclei.extend(parts)
            repaired += fixed
        elif (is_default_region(feature) if region_wanted is None
              else any(n.casefold() in region_wanted for n in _names(feature))):
            regions.extend(_parts(feature, path)[0])
    return nuclei, regions, repaired, seen


def _overlapping_pairs(nuclei: Sequence[BaseGeometry]) -> int:
    """Pairs of polygons whose interiors overlap (positive intersection area)."""
    if len(nuclei) < 2:
        return 0
    tree = shapely.STRtree(nuclei)
    a, b = tree.query(nuclei, predicate="intersects")
    keep = a < b
    if not keep.any():
        return 0
    geoms = np.asarray(nuclei, dtype=object)
    areas = shapely.area(shapely.intersection(geoms[a[keep]], geoms[b[keep]]))
    return int((areas > 0).sum())


def _restrict(nuclei: list[BaseGeometry], region: BaseGeometry | None,
              image_size: tuple[int, int] | None) -> tuple[list[BaseGeometry], int, int]:
    """Nuclei touching the image and the region; the numbers dropped (wholly outside) and crossing the region."""
    if not nuclei:
        return nuclei, 0, 0
    keep = shapely.intersects(shapely.box(0, 0, *image_size), nuclei) if image_size else [True] * len(nuclei)
    crossing = [False] * len(nuclei)
    if region is not None:
        shapely.prepare(region)
        inside = shapely.intersects(region, nuclei)
        within = shapely.within(nuclei, region)
        keep = [bool(k and i) for k, i in zip(keep, inside)]
        crossing = [bool(i and not w) for i, w in zip(inside, within)]
    kept = [n for n, k in zip(nuclei, keep) if k]
    return kept, len(nuclei) - len(kept), sum(c for c, k in zip(crossing, keep) if k)


def _regions_of(path: Path, parts: list[BaseGeometry], region_classes) -> BaseGeometry | None:
    if not parts:
        if region_classes is not None:
            raise GeoJSONError(f"{path}: no polygon annotation of class {sorted(_class_set(region_classes))}; "
                               "the region classes select none")
        return None
    return shapely.union_all(parts)


def read_masks(
    path: str | os.PathLike[str],
    *,
    nucleus_classes: Sequence[str] = NUCLEUS_MASK_CLASSES,
    region_classes: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    require_region: bool = False,
) -> MaskSet:
    """Read drawn nuclei (polygons) and their annotated region from a QuPath GeoJSON export.

    Parameters
    ----------
    path : str or os.PathLike
        Any file :func:`~wsi_weakseg.io.geojson.read_features` reads.
    nucleus_classes : Sequence of str, optional
        Classes (case-insensitive) of the nucleus polygons; default ``("Nucleus",)``.
    region_classes : Sequence of str, optional
        Classes or names of the region polygons instead of the default rule
        (:func:`~wsi_weakseg.weak.points.is_default_region`: unclassified, or named ``Region`` /
        ``Annotated region``).
    image_size : (int, int), optional
        ``(width, height)`` in level-0 pixels; nuclei wholly outside are dropped (counted).
    require_region : bool
        Raise when no region polygon exists (whole slides need one).

    Returns
    -------
    MaskSet

    Raises
    ------
    GeoJSONError
        Malformed file or NaN/infinite coordinates; no nucleus polygon and no region (the message lists the
        polygon classes found); ``region_classes`` selecting nothing; ``require_region`` without a region; every
        nucleus outside the region or the image.
    """
    path = Path(path)
    wanted = _class_set(nucleus_classes) or set()
    parts, region_parts, repaired, seen = _parse(path, wanted, _class_set(region_classes))
    region = _regions_of(path, region_parts, region_classes)
    if region is None and require_region:
        raise GeoJSONError(f"{path}: no annotated region; a whole slide needs one: draw an unclassified polygon "
                           "(or one named 'Annotated region') around the area where you outlined every nucleus")
    if not parts and region is None:
        raise GeoJSONError(f"{path}: no nucleus polygons of classes {sorted(wanted)} and no annotated region; "
                           f"the polygon classes present are {_summary(seen)}. Adjust nucleus_classes")
    kept, n_outside, n_crossing = _restrict(parts, region, image_size)
    if parts and not kept:
        raise GeoJSONError(f"{path}: all {len(parts)} nucleus polygons lie outside the annotated region or the "
                           "image; check that the outlines belong to this image and lie inside the region")
    n_overlapping = _overlapping_pairs(kept)
    _warn(path, len(parts), n_outside, n_crossing, repaired, n_overlapping)
    return MaskSet(tuple(kept), region, n_outside, n_crossing, repaired, n_overlapping, str(path))


def _warn(path: Path, total: int, n_outside: int, n_crossing: int, repaired: int, overlapping: int) -> None:
    if n_outside:
        log.warning("%s: of %d nucleus polygons, dropped %d wholly outside the annotated region or the image",
                    path, total, n_outside)
    if repaired:
        log.warning("%s: %d self-intersecting nucleus polygon(s) repaired (make_valid)", path, repaired)
    if overlapping:
        log.warning("%s: %d pair(s) of nucleus polygons overlap; their shared pixels are left unlabelled",
                    path, overlapping)
    if n_crossing:
        log.info("%s: %d nucleus polygon(s) cross the region's edge; only their part inside is supervised",
                 path, n_crossing)
    if total == 0:
        log.warning("%s: no nucleus polygons; the annotated region is all background", path)


def read_region(path: str | os.PathLike[str], *, region_classes: Sequence[str] | None = None) -> BaseGeometry:
    """The union of the annotated-region polygons of a QuPath GeoJSON file (same rule as :func:`read_masks`).

    Raises
    ------
    GeoJSONError
        Malformed file, NaN coordinates, or no region polygon.
    """
    path = Path(path)
    _, region_parts, _, seen = _parse(path, set(), _class_set(region_classes))
    region = _regions_of(path, region_parts, region_classes)
    if region is None:
        raise GeoJSONError(f"{path}: no annotated region (an unclassified polygon, or one named 'Annotated region'); "
                           f"the polygon classes present are {_summary(seen)}")
    return region
