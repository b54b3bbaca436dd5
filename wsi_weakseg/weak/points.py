"""Point clicks from QuPath GeoJSON: read, validate, deduplicate, restrict to annotated regions, write.

Coordinates are level-0 pixels in QuPath's continuous convention: pixel (col ``i``, row ``j``) spans
``[i, i+1) x [j, j+1)``, so a click at ``(x, y)`` lies in pixel ``(floor(x), floor(y))``.
:attr:`PointSet.xy` holds these ``(x, y)`` values; :meth:`PointSet.rc` converts them to the
pixel-centre ``(row, col)`` coordinates of array indexing, ``(y - 0.5, x - 0.5)``.

Rules (applied in this order by :func:`read_points`):

1. **Points** are the positions of every ``Point`` and ``MultiPoint`` geometry, whatever the
   object type, whose class (:func:`~wsi_weakseg.io.geojson.feature_class_name`: classification,
   else ``properties.name``) is in ``point_classes`` (case-insensitive; ``None`` keeps all).
2. **Duplicates** closer than ``merge_radius`` are merged (see :func:`merge_duplicates`): the most
   specific class wins (a class other than the generic ``Nucleus`` beats ``Nucleus``, which beats
   unclassified), ties go to the first in file order.
3. **Regions** are polygon annotations (``Polygon``/``MultiPolygon``, ``objectType`` annotation
   or missing), selected by :func:`is_default_region` or by ``region_classes``; their union is
   :attr:`PointSet.regions`, ``None`` when there is none (the whole image is annotated).
4. Points **outside** the image or outside every region are dropped, counted and reported in one
   warning.
"""

from __future__ import annotations

from ._points_merge import merge_duplicates
from ._points_model import GENERIC_CLASSES, REGION_NAME, PointSet
from ._points_read import is_default_region, read_points
from ._points_write import write_points

__all__ = [
    "GENERIC_CLASSES",
    "REGION_NAME",
    "PointSet",
    "is_default_region",
    "merge_duplicates",
    "read_points",
    "write_points",
]

