"""In/out points for tissue regions (issue 18): read from QuPath GeoJSON, simulate from masks, write.

A pathologist drops a few points inside the target tissue (tumour, glands) and a few outside it, as QuPath
``Point``/``MultiPoint`` annotations: points of an **in** class (default ``Tumor``) lie in the target, points of
an **out** class (default ``Other`` or ``Background``) outside it; the spec selects the classes
(``in_classes`` / ``out_classes``). An annotated-region polygon bounds where the points were placed (a whole
slide needs one); without one the whole image is the region. The reading rules are those of
:func:`~wsi_weakseg.weak.points.read_points` (classes case-insensitive, points outside the image or region
dropped and counted in one warning), with identical positions merged (the first in file order kept).

The simulation protocol (Zhang et al., CVPR 2023, Sec. 5.2: points "randomly generated according to the
ground-truth labels and ... fixed for all the experiments"): per image, one generator seeded by ``(seed,
crc32(image name))`` draws a random permutation of the mask's target pixels and one of its other pixels; the
``n`` pairs are the first ``n`` of each, so the 3-pair points are the first three of the 5-pair points. Points
sit at pixel centres of the mask's grid (level-0).
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from shapely.geometry.base import BaseGeometry

from wsi_weakseg.errors import ConfigError, GeoJSONError

log = logging.getLogger(__name__)

#: Default classes of in-target points and of out-of-target points.
IN_CLASSES: tuple[str, ...] = ("Tumor",)
OUT_CLASSES: tuple[str, ...] = ("Other", "Background")


@dataclass(frozen=True, eq=False)
class RegionPoints:
    """In/out points of one image in level-0 QuPath coordinates (``(x, y)``, continuous convention).

    Attributes
    ----------
    xy_in, xy_out : ndarray (n, 2) float64
        Points inside and outside the target.
    regions : shapely geometry or None
        The annotated region; ``None`` = the whole image.
    n_dropped_outside : int
        Points dropped because they lay outside the image or the region.
    source : str
    """

    xy_in: np.ndarray
    xy_out: np.ndarray
    regions: BaseGeometry | None = None
    n_dropped_outside: int = 0
    source: str = ""


def _casefold(classes: Sequence[str] | str, key: str) -> list[str]:
    classes = [classes] if isinstance(classes, str) else list(classes)
    if not classes:
        raise ConfigError(f"{key} must name at least one point class")
    return classes


def read_region_points(
    path: str | os.PathLike[str],
    *,
    in_classes: Sequence[str] = IN_CLASSES,
    out_classes: Sequence[str] = OUT_CLASSES,
    region_classes: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    require_region: bool = False,
) -> RegionPoints:
    """Read in/out points (and the annotated region) from a QuPath GeoJSON export.

    Parameters
    ----------
    path : str or os.PathLike
        Any file :func:`~wsi_weakseg.io.geojson.read_features` reads.
    in_classes, out_classes : sequence of str
        Point classes inside / outside the target (case-insensitive). Points of other classes are ignored.
    region_classes : sequence of str, optional
        Polygon classes that are the annotated region (default: the rule of
        :func:`~wsi_weakseg.weak.points.is_default_region`).
    image_size : (int, int), optional
        ``(width, height)`` in level-0 pixels; points outside are dropped (counted, warned).
    require_region : bool
        Raise when no region polygon is found (a whole slide needs one).

    Raises
    ------
    ConfigError
        A class is both an in and an out class, or a class list is empty.
    GeoJSONError
        Malformed file, no point of the selected classes, no in-point or no out-point left, or no region when
        one is required (see :func:`~wsi_weakseg.weak.points.read_points`).
    """
    from wsi_weakseg.weak.points import read_points

    ins, outs = _casefold(in_classes, "in_classes"), _casefold(out_classes, "out_classes")
    both = {c.casefold() for c in ins} & {c.casefold() for c in outs}
    if both:
        raise ConfigError(f"point classes {sorted(both)} are both in_classes and out_classes")
    points = read_points(path, point_classes=[*ins, *outs], region_classes=region_classes, image_size=image_size,
                         merge_radius=0.0, require_regions=require_region, generic_classes=())
    inside = np.array([c.casefold() in {n.casefold() for n in ins} for c in points.classes], bool)
    found = points.class_counts()
    for name, mask, classes in (("in", inside, ins), ("out", ~inside, outs)):
        if not mask.any():
            raise GeoJSONError(f"{path}: no {name}-points (classes {classes}) left; the points read are {found}. "
                               f"Place at least one point of each kind, or adjust in_classes/out_classes")
    return RegionPoints(points.xy[inside], points.xy[~inside], points.regions, points.n_dropped_outside, str(path))


def simulate_region_points(mask: np.ndarray, n_pairs: int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` in-points and out-points drawn at random from a binary mask (the seeded protocol above).

    Parameters
    ----------
    mask : ndarray (H, W)
        Target pixels non-zero.
    n_pairs : int
        Points of each kind.
    seed : int
    name : str
        The image's name; with ``seed`` it seeds the draw, so an image's points do not depend on the others.

    Returns
    -------
    xy_in, xy_out : ndarray (n_pairs, 2) float64
        Pixel centres ``(col + 0.5, row + 0.5)``.

    Raises
    ------
    ValueError
        The mask has fewer than ``n_pairs`` target or non-target pixels.

    Examples
    --------
    >>> m = np.zeros((4, 4), bool); m[:2] = True
    >>> xy_in, xy_out = simulate_region_points(m, 2, seed=0, name="a")
    >>> bool((xy_in[:, 1] < 2).all() and (xy_out[:, 1] > 2).all())
    True
    >>> bool((simulate_region_points(m, 1, 0, "a")[0] == xy_in[:1]).all())  # nested: 1 pair = the first of 2
    True
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
    flat = np.asarray(mask).ravel() != 0
    out = []
    for where in (np.flatnonzero(flat), np.flatnonzero(~flat)):
        if len(where) < n_pairs:
            raise ValueError(f"{name}: the mask has {len(where)} pixels of a kind, fewer than {n_pairs} points")
        chosen = where[rng.permutation(len(where))[:n_pairs]]
        rows, cols = np.divmod(chosen, mask.shape[1])
        out.append(np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64))
    return out[0], out[1]


def write_region_points(path: str | os.PathLike[str], xy_in: np.ndarray, xy_out: np.ndarray, *,
                        in_class: str = IN_CLASSES[0], out_class: str = OUT_CLASSES[0]) -> Path:
    """Write in/out points as QuPath annotations (one ``MultiPoint`` per class; see
    :func:`~wsi_weakseg.weak.points.write_points`); :func:`read_region_points` reads them back."""
    from wsi_weakseg.weak.points import PointSet, write_points

    classes = (in_class,) * len(xy_in) + (out_class,) * len(xy_out)
    return write_points(path, PointSet(np.concatenate([xy_in, xy_out]), classes))


def load_item_region_points(item) -> RegionPoints:
    """Read the ``region_points`` of one :class:`~wsi_weakseg.weak.spec.SpecItem`, checked against its image size.

    A slide item needs an annotated region; the item's ``in_classes`` / ``out_classes`` / ``region_classes``
    select the classes (``None``: the defaults).

    Raises
    ------
    ConfigError
        The item has no ``region_points``.
    """
    from wsi_weakseg.weak.spec import _image_size

    if item.region_points is None:
        raise ConfigError(f"{item.image}: this spec item has no 'region_points' (QuPath in/out points), which every "
                          "training item of the regions recipe needs")
    kwargs = {k: getattr(item, k) for k in ("in_classes", "out_classes") if getattr(item, k) is not None}
    return read_region_points(item.region_points, region_classes=item.region_classes, image_size=_image_size(item),
                              require_region=item.kind == "slide", **kwargs)
