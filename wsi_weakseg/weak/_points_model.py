"""The :class:`PointSet` of :mod:`wsi_weakseg.weak.points` and the names the reader and writer share.

Import from :mod:`wsi_weakseg.weak.points`; this module only holds part of its implementation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from shapely.geometry.base import BaseGeometry

#: Class names (case-insensitive) that say only "a nucleus": any other class is more specific.
GENERIC_CLASSES: tuple[str, ...] = ("Nucleus",)

#: Name of the region annotations :func:`~wsi_weakseg.weak.points.write_points` writes.
REGION_NAME = "Annotated region"


@dataclass(frozen=True, eq=False)
class PointSet:
    """Point clicks of one image, in QuPath's level-0 continuous coordinates.

    Attributes
    ----------
    xy : numpy.ndarray
        ``(n, 2)`` float64 click positions ``(x, y)`` in level-0 pixels, continuous convention
        (the click lies in pixel ``(floor(x), floor(y))``); read-only.
    classes : tuple of str
        Class of each point, ``""`` when unclassified.
    regions : shapely geometry or None
        Union of the annotated regions (Polygon or MultiPolygon, same coordinates as ``xy``);
        ``None`` means the whole image is annotated.
    n_dropped_outside : int
        Points dropped because they lay outside the image or outside every region.
    n_merged_duplicates : int
        Points removed by merging duplicates (input points minus kept points).
    source : str
        The file the points were read from (or a description).
    """

    xy: np.ndarray
    classes: tuple[str, ...]
    regions: BaseGeometry | None = None
    n_dropped_outside: int = 0
    n_merged_duplicates: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        xy = np.array(self.xy, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(xy)):
            raise ValueError("PointSet coordinates must be finite")
        xy.setflags(write=False)
        object.__setattr__(self, "xy", xy)
        classes = tuple(str(c) for c in self.classes)
        if len(classes) != len(xy):
            raise ValueError(f"PointSet has {len(xy)} points but {len(classes)} classes")
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return len(self.xy)

    def rc(self) -> np.ndarray:
        """Pixel-centre ``(row, col)`` coordinates, ``(y - 0.5, x - 0.5)``, as a new ``(n, 2)`` array.

        Examples
        --------
        >>> PointSet(np.array([[10.5, 3.5]]), ("Nucleus",)).rc()
        array([[ 3., 10.]])
        """
        return np.stack([self.xy[:, 1] - 0.5, self.xy[:, 0] - 0.5], axis=1)

    def class_counts(self) -> dict[str, int]:
        """Number of points per class, in order of first appearance."""
        return dict(Counter(self.classes))
