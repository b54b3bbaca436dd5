"""The training data spec: a YAML file listing images or slides and their QuPath point exports.

Example::

    # paths are relative to this file
    defaults:               # optional; applies to every item unless the item overrides it
      mpp: 0.25             # µm/px for images that carry none (and overrides the metadata)
      point_classes: null   # null = all point classes
      region_classes: null  # null = the default region rule of read_points
    items:
      - image: images/TCGA-A7-A13E-01Z-00-DX1.png
        points: points/TCGA-A7-A13E-01Z-00-DX1.geojson
      - slide: slides/case1.svs
        points: case1-points.geojson
        split: validation   # train (default) | validation | test
        labels: labels/case1.png  # optional instance label map: validation metrics only, never a target
      - image: images/TCGA-21-5784-01Z-00-DX1.png
        scribbles: scribbles/TCGA-21-5784-01Z-00-DX1.geojson  # strokes (Scribble2Label); points optional
      - image: images/TCGA-38-6178-01Z-00-DX1.png
        masks: masks/TCGA-38-6178-01Z-00-DX1.geojson  # drawn nuclei (QuPath polygons + annotated region)
      - image: images/TCGA-49-4488-01Z-00-DX1.png       # no labels: an unlabelled image (few-masks recipe)
      - image: glas/train_1.png
        region_points: glas-points/train_1.geojson  # in/out points of a tissue region (regions recipe)

An item names ``points``, ``scribbles``, ``masks``, several of them, or none (an unlabelled image, which only
the few-masks recipe learns from; the other recipes refuse it). ``nucleus_classes`` / ``background_classes``
(in ``defaults`` or an item) select the stroke classes as ``point_classes`` selects points (defaults
``[Nucleus]`` / ``[Background]``; ``Ignore*`` strokes mark nothing); ``nucleus_classes`` also selects the
nucleus polygons of a ``masks`` GeoJSON. ``masks`` may instead be a label image on the item's pixel grid
(:mod:`wsi_weakseg.weak.masks`); ``region: FILE.geojson`` then limits it to the file's annotated-region
polygons, and for an item without labels it bounds the area read (a slide needs one). ``in_classes`` /
``out_classes`` select the point classes of a ``region_points`` file (:mod:`wsi_weakseg.weak.region_points`).

Unknown keys are errors (a misspelt key must never be ignored silently).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from wsi_weakseg.errors import ConfigError, MissingMppError
from wsi_weakseg.weak.points import PointSet, read_points

if TYPE_CHECKING:
    import numpy as np
    from shapely.geometry.base import BaseGeometry

    from wsi_weakseg.weak.masks import MaskSet
    from wsi_weakseg.weak.scribbles import ScribbleSet

__all__ = ["SPLITS", "DataSpec", "SpecItem", "load_item_masks", "load_item_points", "load_item_region",
           "load_item_scribbles", "load_spec"]

#: Allowed values of ``split``.
SPLITS: tuple[str, ...] = ("train", "validation", "test")

_TOP_KEYS = ("defaults", "items")
_CLASS_KEYS = ("nucleus_classes", "background_classes", "in_classes", "out_classes")
_DEFAULT_KEYS = ("mpp", "point_classes", "region_classes", *_CLASS_KEYS)
_ITEM_KEYS = ("image", "slide", "points", "scribbles", "masks", "region", "region_points", "labels", "mpp",
              "point_classes", "region_classes", *_CLASS_KEYS, "split")
#: Suffixes of a ``masks`` file read as QuPath GeoJSON (anything else is a label image).
_GEOJSON_SUFFIXES = (".geojson", ".json", ".gz", ".zip")


@dataclass(frozen=True)
class SpecItem:
    """One image or slide of a data spec, with its point annotations.

    Attributes
    ----------
    image : pathlib.Path
        Absolute path of the image or slide.
    points : pathlib.Path or None
        Absolute path of its QuPath GeoJSON point export (``None`` for a scribbles-only item).
    kind : str
        ``"image"`` (a plain image, fully annotated unless it has region polygons) or ``"slide"``
        (a whole slide: its points file must hold an annotated region).
    mpp : float or None
        Pixel size in µm/px to use (overrides the file's metadata); ``None`` = from the file.
    point_classes : tuple of str or None
        Point classes to keep; ``None`` = all.
    region_classes : tuple of str or None
        Polygon classes that are annotated regions; ``None`` = the default rule.
    split : str
        ``"train"``, ``"validation"`` or ``"test"``.
    labels : pathlib.Path or None
        Optional instance label map (same pixel grid as the image; 0 background): used only to
        measure validation metrics, never as a training target.
    scribbles : pathlib.Path or None
        Absolute path of its QuPath GeoJSON scribble export (line or brush strokes), if any.
    nucleus_classes, background_classes : tuple of str or None
        Stroke classes marking nucleus / background; ``None`` = the defaults of
        :func:`~wsi_weakseg.weak.scribbles.read_scribbles`. ``nucleus_classes`` also selects nucleus polygons.
    masks : pathlib.Path or None
        Drawn nuclei: QuPath GeoJSON polygons (+ annotated region) or a label image (a training target of the
        few-masks recipe, unlike ``labels``).
    region : pathlib.Path or None
        QuPath GeoJSON whose region polygons limit a label-image ``masks`` or bound an unlabelled item.
    region_points : pathlib.Path or None
        QuPath GeoJSON of in/out points of a tissue region (the regions recipe).
    in_classes, out_classes : tuple of str or None
        Point classes of ``region_points`` inside / outside the target; ``None`` = the reader's defaults.
    """

    image: Path
    points: Path | None
    kind: str
    mpp: float | None = None
    point_classes: tuple[str, ...] | None = None
    region_classes: tuple[str, ...] | None = None
    split: str = "train"
    labels: Path | None = None
    scribbles: Path | None = None
    nucleus_classes: tuple[str, ...] | None = None
    background_classes: tuple[str, ...] | None = None
    masks: Path | None = None
    region: Path | None = None
    region_points: Path | None = None
    in_classes: tuple[str, ...] | None = None
    out_classes: tuple[str, ...] | None = None

    @property
    def unlabelled(self) -> bool:
        """Whether the item names no labels at all (no points, scribbles, masks or region points)."""
        return self.points is None and self.scribbles is None and self.masks is None and self.region_points is None


@dataclass(frozen=True)
class DataSpec:
    """A loaded data spec: its file and its items in file order."""

    path: Path
    items: tuple[SpecItem, ...]

    def split(self, name: str) -> tuple[SpecItem, ...]:
        """Items of split ``name`` (``"train"``, ``"validation"`` or ``"test"``), in file order."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return tuple(item for item in self.items if item.split == name)

    def __len__(self) -> int:
        return len(self.items)


def _check_keys(mapping: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed keys are {', '.join(allowed)}")


def _mpp(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: mpp must be a positive number of µm per pixel (e.g. 0.25), got {value!r}")
    return float(value)


def _classes(value: Any, key: str, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be null (all) or a non-empty list of class names, got {value!r}")
    return tuple(value)


def _path(value: Any, key: str, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a file path, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{where}: {key} file not found: {path} (relative paths are resolved against {base})")
    return path


def load_spec(path: str | os.PathLike[str]) -> DataSpec:
    """Load and validate a data spec.

    Parameters
    ----------
    path : str or os.PathLike
        The YAML file. Relative paths inside it are resolved against its folder.

    Returns
    -------
    DataSpec
        Items with absolute paths and their defaults applied.

    Raises
    ------
    ConfigError
        If the file is missing or not YAML; a key is unknown (at the top level, in ``defaults`` or
        in an item; the message names it and lists the allowed keys); ``items`` is missing or
        empty; an item has none or both of ``image`` and ``slide``, a ``region`` beside GeoJSON ``masks``,
        a file that does not exist, an ``mpp`` that is not a positive finite number, or a ``split`` other than
        train, validation or test.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"data spec not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid YAML file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the spec must be a mapping with an 'items' list, got {type(data).__name__}")
    _check_keys(data, _TOP_KEYS, str(path))

    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: defaults must be a mapping, got {type(defaults).__name__}")
    _check_keys(defaults, _DEFAULT_KEYS, f"{path}: defaults")
    raw_items = data.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise ConfigError(f"{path}: 'items' must be a non-empty list of {{image or slide, points}} entries")
    resolved = _resolved_defaults(defaults, f"{path}: defaults")
    items = [_item(raw, resolved, path.parent, f"{path}: item {i}") for i, raw in enumerate(raw_items)]
    return DataSpec(path=path, items=tuple(items))


def _resolved_defaults(defaults: dict, where: str) -> dict:
    """The spec's ``defaults`` as :class:`SpecItem` field values (validated once for every item)."""
    out = {"mpp": _mpp(defaults.get("mpp"), where)}
    for key in ("point_classes", "region_classes", *_CLASS_KEYS):
        out[key] = _classes(defaults.get(key), key, where)
    return out


_FILE_KEYS = ("points", "labels", "scribbles", "masks", "region", "region_points")


def _item(raw: object, defaults: dict, base: Path, where: str) -> SpecItem:
    """One validated spec item, relative paths resolved against ``base``, ``defaults`` where it names nothing."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with image (or slide) and points, got {raw!r}")
    _check_keys(raw, _ITEM_KEYS, where)
    if ("image" in raw) == ("slide" in raw):
        raise ConfigError(f"{where}: give exactly one of 'image' (a plain image) or 'slide' (a whole slide)")
    kind = "image" if "image" in raw else "slide"
    if "region" in raw and "masks" in raw and _is_geojson(raw["masks"]):
        raise ConfigError(f"{where}: a GeoJSON 'masks' file holds its own annotated region; 'region' is for "
                          "label-image masks and unlabelled items")
    split = raw.get("split", "train")
    if split not in SPLITS:
        raise ConfigError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    files = {k: _path(raw[k], k, base, where) if k in raw else None for k in _FILE_KEYS}
    classes = {k: _classes(raw[k], k, where) if k in raw else defaults[k]
               for k in ("point_classes", "region_classes", *_CLASS_KEYS)}
    mpp = _mpp(raw["mpp"], where) if "mpp" in raw else defaults["mpp"]
    return SpecItem(image=_path(raw[kind], kind, base, where), kind=kind, mpp=mpp, split=split, **files, **classes)


def load_item_points(item: SpecItem, *, merge_radius: float = 1.0) -> PointSet:
    """Read the points of one spec item, checked against its image size.

    The image or slide is opened only for its size: the image size passed to
    :func:`~wsi_weakseg.weak.points.read_points` is the size of ``slide.bounds`` (QuPath
    coordinates start at the bounds origin; for plain images this is the whole image). Slides
    must have an annotated region (``require_regions``); plain images without one count as fully
    annotated.

    Raises
    ------
    ConfigError
        If the item has no ``points`` (a scribbles-only item).
    MissingMppError
        If the file has no pixel size and the item (or the defaults) give no ``mpp``.
    GeoJSONError
        See :func:`~wsi_weakseg.weak.points.read_points`.
    """
    if item.points is None:
        raise ConfigError(f"{item.image}: this spec item has no 'points' (QuPath point clicks), which the points "
                          "recipe's training items and every validation item need")
    width, height = _image_size(item)
    return read_points(
        item.points,
        point_classes=item.point_classes,
        region_classes=item.region_classes,
        image_size=(width, height),
        merge_radius=merge_radius,
        require_regions=item.kind == "slide",
    )


def load_item_scribbles(item: SpecItem) -> ScribbleSet:
    """Read the scribbles of one spec item, checked against its image size (``slide.bounds``, as for points).

    Raises
    ------
    ConfigError
        If the item has no ``scribbles``.
    MissingMppError
        If the file has no pixel size and the item (or the defaults) give no ``mpp``.
    GeoJSONError
        See :func:`~wsi_weakseg.weak.scribbles.read_scribbles`.
    """
    from wsi_weakseg.weak.scribbles import read_scribbles

    if item.scribbles is None:
        raise ConfigError(f"{item.image}: this spec item has no 'scribbles' file")
    kwargs = {k: getattr(item, k) for k in ("nucleus_classes", "background_classes") if getattr(item, k) is not None}
    return read_scribbles(item.scribbles, image_size=_image_size(item), **kwargs)


def _is_geojson(value: Any) -> bool:
    name = str(value).lower()
    return name.endswith(_GEOJSON_SUFFIXES)


def load_item_masks(item: SpecItem) -> tuple[MaskSet, np.ndarray | None]:
    """Read the drawn nuclei of one spec item: polygons and region, or a label image and its region.

    Returns
    -------
    masks : MaskSet
        The nucleus polygons and annotated region of a GeoJSON ``masks`` file (checked against
        ``slide.bounds``); for a label image, no polygons and the region of ``region`` (``None``: all of it).
    label_image : ndarray or None
        The instance map of a label-image ``masks`` on the image's level-0 grid
        (:func:`~wsi_weakseg.weak.masks.instances_from_image`), else ``None``.

    Raises
    ------
    ConfigError
        No ``masks``; a label image on a whole slide, or one whose size is not the image's.
    GeoJSONError
        See :func:`~wsi_weakseg.weak.masks.read_masks`.
    """
    from wsi_weakseg.weak.masks import (
        MaskSet,
        instances_from_image,
        read_masks,
        read_region,
    )

    if item.masks is None:
        raise ConfigError(f"{item.image}: this spec item has no 'masks' file")
    size = _image_size(item)
    kwargs = {"region_classes": item.region_classes}
    if _is_geojson(item.masks):
        if item.nucleus_classes is not None:
            kwargs["nucleus_classes"] = item.nucleus_classes
        return read_masks(item.masks, image_size=size, require_region=item.kind == "slide", **kwargs), None
    if item.kind == "slide":
        raise ConfigError(f"{item.masks}: a whole slide's masks must be QuPath polygons (GeoJSON), not a label image")
    from wsi_weakseg.evaluate import read_label_map

    arr, _ = read_label_map(item.masks)
    if (arr.shape[1], arr.shape[0]) != size:
        raise ConfigError(f"{item.masks}: label image is {arr.shape[1]}x{arr.shape[0]} but the image is "
                          f"{size[0]}x{size[1]}; they must share the pixel grid")
    region = read_region(item.region, **kwargs) if item.region is not None else None
    return MaskSet((), region, source=str(item.masks)), instances_from_image(arr, str(item.masks))


def load_item_region(item: SpecItem) -> BaseGeometry | None:
    """The annotated region of an item's ``region`` file (level-0 pixels), or ``None`` when it names none."""
    from wsi_weakseg.weak.masks import read_region

    if item.region is None:
        return None
    return read_region(item.region, region_classes=item.region_classes)


def _image_size(item: SpecItem) -> tuple[int, int]:
    """``(width, height)`` of the item's ``slide.bounds`` (the image opened only for its size)."""
    from wsi_weakseg.slide import open_slide

    try:
        slide = open_slide(item.image, mpp=item.mpp)
    except MissingMppError as exc:
        raise MissingMppError(
            f"{item.image} has no usable pixel size metadata; set 'mpp' for this item or under 'defaults' in the spec"
        ) from exc
    with slide:
        _, _, width, height = slide.bounds
    return int(width), int(height)
