"""Inputs of ``wsi-weakseg evaluate``: label maps, GeoJSON detections rasterised on a grid, points, pairing.

Coordinates follow QuPath's convention: pixel ``(col i, row j)`` spans ``[i, i+1) x [j, j+1)``. A polygon
owns the pixels whose centre ``(i + 0.5, j + 0.5)`` lies strictly inside it (holes respected); object ids
follow feature order and, where polygons overlap, the later one wins. Point ``(x, y)`` is array position
``(row, col) = (y - 0.5, x - 0.5)``.

Public names are re-exported by :mod:`wsi_weakseg.evaluate.run`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_weakseg.errors import (
    ConfigError,
    GeoJSONError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedFormatError,
    WsiWeaksegError,
)

from .detection import instance_centroids

log = logging.getLogger("wsi_weakseg.evaluate.run")

_LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
_GEOJSON_SUFFIXES = (".geojson", ".geojson.gz", ".json", ".json.gz", ".zip")
#: Suffixes of the files paired by stem in folders (others, such as segment's ``.run.json``, are ignored).
FOLDER_SUFFIXES = (".geojson.gz", ".geojson", ".tiff", ".tif", ".png", ".npy")
_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
_PREDICTED_TYPES = ("detection", "cell")


@dataclass
class Objects:
    """Predicted or ground-truth objects of one image: a label map, else ``(row, col)`` points."""

    labels: np.ndarray | None = None
    points_rc: np.ndarray | None = None
    regions: Any = None  # annotated regions of a point file (shapely, continuous xy) or None
    mpp: float | None = None

    def centres(self) -> np.ndarray:
        """``(n, 2)`` ``(row, col)`` object centres: label-map centroids, else the points."""
        return instance_centroids(self.labels) if self.labels is not None else self.points_rc


def file_kind(path: Path) -> str:
    """``"geojson"`` or ``"labels"`` by file name; :class:`UnsupportedFormatError` for anything else."""
    name = path.name.lower()
    if name.endswith(_GEOJSON_SUFFIXES):
        return "geojson"
    if name.endswith(_LABEL_SUFFIXES):
        return "labels"
    raise UnsupportedFormatError(
        f"{path}: unknown kind of file; expected a label map ({', '.join(_LABEL_SUFFIXES)}) or GeoJSON "
        f"({', '.join(_GEOJSON_SUFFIXES)})"
    )


def read_label_map(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read a 2-D instance label map (0 = background) and its pixel size when the file carries one.

    Parameters
    ----------
    path : str or os.PathLike
        Single-channel PNG (8/16-bit), TIFF (first page) or ``.npy`` of non-negative integers.

    Returns
    -------
    labels : numpy.ndarray
        ``(H, W)`` integer array (16-bit PNGs stay 16-bit).
    mpp : float or None
        µm/px from TIFF resolution tags or PNG pHYs, ``None`` when absent or implausible.

    Raises
    ------
    SlideNotFoundError
        The file does not exist.
    UnsupportedFormatError
        RGB images, arrays that are not 2-D, negative or non-integer values.
    SlideReadError
        The file cannot be decoded.
    """
    from wsi_weakseg.slide._mpp import mpp_from_dpi, mpp_from_tiff_tags

    path = Path(path)
    if not path.is_file():
        raise SlideNotFoundError(f"label map not found: {path}")
    mpp = None
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                arr = page.asarray()
                tags = {t.name: t.value for t in page.tags.values()}
            mpp = mpp_from_tiff_tags(tags, str(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode not in _LABEL_MODES:
                    raise UnsupportedFormatError(
                        f"{path}: a {im.mode} image is not an instance label map; expected one channel of object "
                        "ids (0 = background), e.g. a 16-bit PNG"
                    )
                arr = np.asarray(im)
                dpi = im.info.get("dpi")
            mpp = mpp_from_dpi(dpi, str(path))
    except WsiWeaksegError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for damaged files
        raise SlideReadError(f"{path}: cannot read the label map ({type(exc).__name__}: {exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise UnsupportedFormatError(f"{path}: expected a 2-D instance label map, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" or (arr.dtype.kind == "i" and arr.size and arr.min() < 0):
        raise UnsupportedFormatError(f"{path}: label values must be non-negative integers (got {arr.dtype})")
    return arr, mpp


def rasterize_polygons(geometries: Sequence[Any], shape: tuple[int, int]) -> np.ndarray:
    """Label map of polygons at pixel centres: pixel ``(r, c)`` gets id ``k + 1`` when ``(c + .5, r + .5)`` is inside.

    Parameters
    ----------
    geometries : sequence of shapely Polygon or MultiPolygon
        In pixel coordinates ``(x, y)`` of the grid (QuPath convention); ``None`` or empty entries keep their
        id unused.
    shape : (int, int)
        ``(H, W)`` of the label map.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` int32; where polygons overlap, the later one wins.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> rasterize_polygons([box(1, 0, 3, 2), box(0, 1, 2, 2)], (2, 3))
    array([[0, 1, 1],
           [2, 2, 1]], dtype=int32)
    """
    import shapely

    H, W = shape
    out = np.zeros((H, W), np.int32)
    n_overlap = n_outside = 0
    for k, geom in enumerate(geometries, start=1):
        if geom is None or geom.is_empty:
            continue
        x0, y0, x1, y1 = geom.bounds
        if x1 <= 0 or y1 <= 0 or x0 >= W or y0 >= H:
            n_outside += 1
            continue
        c0, c1 = max(math.ceil(x0 - 0.5), 0), min(math.floor(x1 - 0.5), W - 1)
        r0, r1 = max(math.ceil(y0 - 0.5), 0), min(math.floor(y1 - 0.5), H - 1)
        if c0 > c1 or r0 > r1:
            continue
        shapely.prepare(geom)
        inside = shapely.contains_xy(geom, np.arange(c0, c1 + 1)[None, :] + 0.5, np.arange(r0, r1 + 1)[:, None] + 0.5)
        window = out[r0 : r1 + 1, c0 : c1 + 1]
        n_overlap += int(np.count_nonzero(window[inside]))
        window[inside] = k
    if n_outside:
        log.warning("%d of %d predicted objects lie outside the %dx%d ground truth; do they belong to this image?",
                    n_outside, len(geometries), W, H)
    if n_overlap:
        log.warning("predicted polygons overlap on %d pixels; the later object was kept there", n_overlap)
    return out


def read_detections(path: Path) -> tuple[list[Any], np.ndarray]:
    """Polygons (nucleus geometry of cells) and points of a GeoJSON prediction, in feature order."""
    import shapely
    from shapely.geometry import shape

    from wsi_weakseg.io._geojson_read import feature_object_type
    from wsi_weakseg.io.geojson import read_features

    features = read_features(path)
    predicted_only = any(feature_object_type(f) in _PREDICTED_TYPES for f in features)
    polygons: list[Any] = []
    points: list[list[float]] = []
    n_skipped = 0
    for i, feature in enumerate(features):
        geometry = feature["geometry"]
        if geometry["type"] in ("Point", "MultiPoint"):
            coords = geometry["coordinates"]
            points.extend(c[:2] for c in ([coords] if geometry["type"] == "Point" else coords))
            continue
        if geometry["type"] not in ("Polygon", "MultiPolygon"):
            continue
        if predicted_only and feature_object_type(feature) not in _PREDICTED_TYPES:
            n_skipped += 1  # e.g. the annotation a QuPath detection was run in
            continue
        nucleus = (feature.get("properties") or {}).get("nucleusGeometry")
        try:
            geom = shape(nucleus if isinstance(nucleus, dict) else geometry)
            if not np.all(np.isfinite(shapely.get_coordinates(geom))):
                raise ValueError("NaN or infinite coordinate")
            if not geom.is_valid:
                parts = shapely.get_parts(shapely.make_valid(geom))
                geom = shapely.union_all([p for p in parts if p.geom_type in ("Polygon", "MultiPolygon")])
        except (ValueError, TypeError, AttributeError, KeyError, shapely.errors.GEOSException) as exc:
            raise GeoJSONError(f"{path}: feature {i} is not a usable polygon: {exc}") from exc
        polygons.append(geom)
    if n_skipped:
        log.info("%s: ignored %d polygon annotation(s) beside the detections", path, n_skipped)
    if not polygons and not points:
        raise GeoJSONError(f"{path}: no polygon or point objects to evaluate")
    if polygons and points:
        log.info("%s: %d point(s) ignored; the polygons are evaluated", path, len(points))
    return polygons, np.asarray(points, np.float64).reshape(-1, 2)


def read_prediction(path: Path, shape: tuple[int, int] | None) -> Objects:
    """A prediction as a label map (of ``shape`` when given) or, without one, as centroid points."""
    if file_kind(path) == "labels":
        labels, _ = read_label_map(path)
        if shape is not None and labels.shape != tuple(shape):
            raise ConfigError(
                f"{path}: prediction is {labels.shape[1]}x{labels.shape[0]} px but the ground truth is "
                f"{shape[1]}x{shape[0]}; both must share the pixel grid"
            )
        return Objects(labels=labels)
    polygons, points = read_detections(path)
    if polygons and shape is not None:
        return Objects(labels=rasterize_polygons(polygons, shape))
    if polygons:  # area centroids: for pixel-edge outlines, exactly the mean of the pixel centres
        xy = [(g.centroid.x, g.centroid.y) for g in polygons if g.area > 0]
        points = np.asarray(xy, np.float64).reshape(-1, 2)
    return Objects(points_rc=points[:, ::-1] - 0.5)


def read_truth(path: Path, image_size: tuple[int, int] | None, point_classes: Sequence[str] | None) -> Objects:
    """Ground truth: a label map (with its metadata pixel size) or QuPath points (with their regions).

    ``image_size`` ``(width, height)``, when known, drops points outside the image (see
    :func:`~wsi_weakseg.weak.points.read_points`).
    """
    if file_kind(path) == "labels":
        labels, mpp = read_label_map(path)
        return Objects(labels=labels, mpp=mpp)
    from wsi_weakseg.weak.points import read_points

    points = read_points(path, point_classes=point_classes, image_size=image_size)
    return Objects(points_rc=points.rc(), regions=points.regions)


def _stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in FOLDER_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _listing(folder: Path) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        stem = _stem(p.name) if p.is_file() and not p.name.startswith(".") else None
        if stem is not None:
            found.setdefault(stem, []).append(p)
    clashes = {s: ps for s, ps in found.items() if len(ps) > 1}
    if clashes:
        s, ps = next(iter(clashes.items()))
        raise ConfigError(f"{folder}: several files share the name {s!r} ({', '.join(p.name for p in ps)}); keep one")
    return {s: ps[0] for s, ps in found.items()}


def _names(stems: Sequence[str], limit: int = 10) -> str:
    more = f" and {len(stems) - limit} more" if len(stems) > limit else ""
    return ", ".join(stems[:limit]) + more


def pair_files(pred: str | os.PathLike[str], gt: str | os.PathLike[str]) -> list[tuple[str, Path, Path]]:
    """``(name, prediction, ground truth)`` triples: two files, or two folders paired by file stem.

    In folders, files ending with ``.geojson``, ``.geojson.gz``, ``.png``, ``.tif``, ``.tiff`` or ``.npy`` are
    paired by the name before that suffix; other files (e.g. ``segment``'s ``.run.json``) are ignored.

    Raises
    ------
    SlideNotFoundError
        A path does not exist.
    ConfigError
        A file and a folder are mixed; a prediction has no ground truth (all such names are listed); nothing
        to pair; two files of one folder share a name. Ground truth without a prediction is only logged.
    """
    pred, gt = Path(pred), Path(gt)
    for p in (pred, gt):
        if not p.exists():
            raise SlideNotFoundError(f"no such file or folder: {p}")
    if pred.is_dir() != gt.is_dir():
        raise ConfigError(f"give two files or two folders, got {'folder' if pred.is_dir() else 'file'} {pred} "
                          f"and {'folder' if gt.is_dir() else 'file'} {gt}")
    if not pred.is_dir():
        return [(_stem(gt.name) or gt.stem, pred, gt)]
    preds, gts = _listing(pred), _listing(gt)
    missing = sorted(set(preds) - set(gts))
    if missing:
        raise ConfigError(f"{len(missing)} prediction(s) in {pred} have no ground truth of the same name in {gt}: "
                          f"{_names(missing)}")
    unused = sorted(set(gts) - set(preds))
    if unused:
        log.warning("%d ground-truth file(s) in %s have no prediction and are not evaluated: %s",
                    len(unused), gt, _names(unused))
    if not preds:
        raise ConfigError(f"{pred}: no prediction files ({', '.join(FOLDER_SUFFIXES)})")
    return [(s, preds[s], gts[s]) for s in sorted(preds)]
