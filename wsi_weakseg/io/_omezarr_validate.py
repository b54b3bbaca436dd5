"""Check an OME-Zarr 0.5 image (with its labels) against the spec; re-exported by :mod:`.omezarr`.

Covers what this package writes and what viewers rely on: https://ngff.openmicroscopy.org/0.5/
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import zarr

_SPACE_UNITS = frozenset(
    f"{p}meter"
    for p in (
        "yocto", "zepto", "atto", "femto", "pico", "nano", "micro", "milli", "centi", "deci", "",
        "deca", "hecto", "kilo", "mega", "giga", "tera", "peta", "exa", "zetta", "yotta",
    )
) | {"angstrom", "foot", "inch", "mile", "parsec", "yard"}  # fmt: skip
_TIME_UNITS = frozenset(
    f"{p}second"
    for p in (
        "yocto", "zepto", "atto", "femto", "pico", "nano", "micro", "milli", "centi", "deci", "",
        "deca", "hecto", "kilo", "mega", "giga", "tera", "peta", "exa", "zetta", "yotta",
    )
) | {"day", "hour", "minute"}  # fmt: skip
_HEX = re.compile(r"^[0-9A-Fa-f]{6}$")
_ORDER = {"time": 0, "channel": 1, "space": 3}


def _ome(node: zarr.Group, where: str, problems: list[str]) -> dict[str, Any] | None:
    attrs = node.attrs.asdict()
    ome = attrs.get("ome")
    if not isinstance(ome, dict):
        problems.append(f"{where}: no 'ome' object in the attributes (OME-Zarr 0.5 keeps its metadata there)")
        return None
    if ome.get("version") != "0.5":
        problems.append(f"{where}: ome.version is {ome.get('version')!r}, expected '0.5'")
    return ome


def _check_axes(axes: Any, where: str, problems: list[str]) -> list[dict[str, Any]]:
    if not isinstance(axes, list) or not 2 <= len(axes) <= 5 or not all(isinstance(a, dict) for a in axes):
        problems.append(f"{where}: 'axes' must be a list of 2 to 5 axis objects")
        return []
    names = [a.get("name") for a in axes]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        problems.append(f"{where}: axis names must be unique non-empty strings, got {names}")
    types = [a.get("type") for a in axes]
    for a in axes:
        kind, unit = a.get("type"), a.get("unit")
        if kind == "space" and unit is not None and unit not in _SPACE_UNITS:
            problems.append(f"{where}: axis {a.get('name')!r} has unknown space unit {unit!r}")
        if kind == "time" and unit is not None and unit not in _TIME_UNITS:
            problems.append(f"{where}: axis {a.get('name')!r} has unknown time unit {unit!r}")
        if kind is not None and not isinstance(kind, str):
            problems.append(f"{where}: axis {a.get('name')!r} has a non-string type")
    n_space = types.count("space")
    if not 2 <= n_space <= 3:
        problems.append(f"{where}: needs 2 or 3 space axes, got {n_space}")
    if types.count("time") > 1 or types.count("channel") > 1:
        problems.append(f"{where}: at most one time and one channel axis are allowed")
    ranks = [_ORDER.get(t, 2) for t in types]
    if ranks != sorted(ranks):
        problems.append(f"{where}: axes must be ordered time, channel (or custom), then space; got {types}")
    return axes


Transform = tuple[list[float], list[float]]  # (scale, translation) of one dataset


def _check_transforms(transforms: Any, ndim: int, where: str, problems: list[str]) -> Transform | None:
    """Check one dataset's transforms; return its scale and translation (zeros when absent)."""
    if not isinstance(transforms, list) or not transforms:
        problems.append(f"{where}: coordinateTransformations must be a non-empty list")
        return None
    kinds = [t.get("type") if isinstance(t, dict) else None for t in transforms]
    if kinds[0] != "scale" or kinds.count("scale") != 1 or kinds.count("translation") > 1 or len(kinds) > 2 or (
        len(kinds) == 2 and kinds[1] != "translation"
    ):
        problems.append(f"{where}: transforms must be one 'scale', optionally followed by one 'translation'; got {kinds}")
        return None
    for t in transforms:
        values = t.get(t["type"])
        if not isinstance(values, list) or len(values) != ndim:
            problems.append(f"{where}: {t['type']} must list {ndim} numbers, got {values!r}")
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            problems.append(f"{where}: {t['type']} values must be finite numbers, got {values}")
            return None
    scale = [float(v) for v in transforms[0]["scale"]]
    if not all(v > 0 for v in scale):
        problems.append(f"{where}: scale values must be positive, got {scale}")
        return None
    translation = [float(v) for v in transforms[1]["translation"]] if len(transforms) == 2 else [0.0] * ndim
    return scale, translation


def _check_multiscales(
    group: zarr.Group, ome: dict[str, Any], where: str, problems: list[str]
) -> tuple[list[tuple[int, ...]], Transform | None]:
    """Validate ``ome.multiscales`` of ``group``; return the level shapes and level-0 transform of the first."""
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        problems.append(f"{where}: 'multiscales' must be a non-empty list")
        return [], None
    first_shapes: list[tuple[int, ...]] = []
    first_transform: Transform | None = None
    for m, ms in enumerate(multiscales):
        at = f"{where} multiscales[{m}]"
        if not isinstance(ms, dict):
            problems.append(f"{at}: must be an object")
            continue
        axes = _check_axes(ms.get("axes"), at, problems)
        datasets = ms.get("datasets")
        if not axes or not isinstance(datasets, list) or not datasets:
            if axes:
                problems.append(f"{at}: 'datasets' must be a non-empty list")
            continue
        ndim = len(axes)
        space = [i for i, a in enumerate(axes) if a.get("type") == "space"]
        shapes: list[tuple[int, ...]] = []
        scales: list[list[float]] = []
        for d, ds in enumerate(datasets):
            dat = f"{at} datasets[{d}]"
            path = ds.get("path") if isinstance(ds, dict) else None
            if not isinstance(path, str) or not path:
                problems.append(f"{dat}: missing 'path'")
                continue
            node = group.get(path)
            if not isinstance(node, zarr.Array):
                problems.append(f"{dat}: array {path!r} does not exist")
                continue
            if node.ndim != ndim:
                problems.append(f"{dat}: array {path!r} has {node.ndim} dimensions but there are {ndim} axes")
                continue
            names = node.metadata.dimension_names if hasattr(node.metadata, "dimension_names") else None
            if names is not None and list(names) != [a.get("name") for a in axes]:
                problems.append(f"{dat}: dimension_names {list(names)} differ from the axis names")
            transform = _check_transforms(ds.get("coordinateTransformations"), ndim, dat, problems)
            if transform is not None:
                shapes.append(tuple(node.shape))
                scales.append(transform[0])
                if m == 0 and d == 0:
                    first_transform = transform
        for k in range(1, len(shapes)):
            for i in range(ndim):
                expected = shapes[k - 1][i] * scales[k - 1][i] / scales[k][i]
                if scales[k][i] < scales[k - 1][i]:
                    problems.append(f"{at}: level {k} is finer than level {k - 1} on axis {i}; order levels fine to coarse")
                elif abs(shapes[k][i] - expected) >= 1 or (i not in space and shapes[k][i] != shapes[k - 1][i]):
                    problems.append(
                        f"{at}: level {k} shape {shapes[k]} is inconsistent with level {k - 1} shape "
                        f"{shapes[k - 1]} and the scales {scales[k - 1]} -> {scales[k]}"
                    )
                    break
        if m == 0:
            first_shapes = shapes
    return first_shapes, first_transform


def _check_omero(omero: Any, n_channels: int | None, problems: list[str]) -> None:
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(channels, list):
        problems.append("root: omero.channels must be a list")
        return
    if n_channels is not None and len(channels) != n_channels:
        problems.append(f"root: omero lists {len(channels)} channels, the image has {n_channels}")
    for k, ch in enumerate(channels):
        if not isinstance(ch, dict) or not _HEX.match(str(ch.get("color", ""))):
            problems.append(f"root: omero.channels[{k}].color must be an RRGGBB hex string")
        window = ch.get("window") if isinstance(ch, dict) else None
        if not isinstance(window, dict) or not all(isinstance(window.get(key), (int, float)) for key in ("min", "max", "start", "end")):
            problems.append(f"root: omero.channels[{k}].window needs numeric min, max, start, end")


def _check_labels(
    root: zarr.Group, image_shape: tuple[int, ...] | None, image_transform: Transform | None, problems: list[str]
) -> None:
    labels = root.get("labels")
    if labels is None:
        return
    if not isinstance(labels, zarr.Group):
        problems.append("labels: must be a group")
        return
    ome = _ome(labels, "labels", problems)
    if ome is None:
        return
    names = ome.get("labels")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append("labels: ome.labels must be a list of label image paths")
        return
    for name in names:
        where = f"labels/{name}"
        node = labels.get(name)
        if not isinstance(node, zarr.Group):
            problems.append(f"{where}: listed label image does not exist")
            continue
        label_ome = _ome(node, where, problems)
        if label_ome is None:
            continue
        image_label = label_ome.get("image-label")
        if not isinstance(image_label, dict):
            problems.append(f"{where}: 'image-label' object missing")
        elif "source" in image_label and not isinstance((image_label["source"] or {}).get("image", ""), str):
            problems.append(f"{where}: image-label.source.image must be a string path")
        shapes, transform = _check_multiscales(node, label_ome, where, problems)
        for ds in label_ome.get("multiscales", [{}])[0].get("datasets", []):
            arr = node.get(ds.get("path", "")) if isinstance(ds, dict) else None
            if isinstance(arr, zarr.Array) and not np.issubdtype(arr.dtype, np.integer):
                problems.append(f"{where}/{ds['path']}: label arrays must have an integer dtype, got {arr.dtype}")
        if shapes and image_shape is not None and shapes[0][-2:] != image_shape[-2:]:
            problems.append(f"{where}: level 0 y/x shape {shapes[0][-2:]} differs from the image's {image_shape[-2:]}")
        if transform is not None and image_transform is not None:
            # same pixel grid as the image: level 0 must share its y/x scale and translation (registration)
            for kind, mine, theirs in zip(("scale", "translation"), transform, image_transform):
                if not np.allclose(mine[-2:], theirs[-2:], rtol=1e-9, atol=1e-12):
                    problems.append(
                        f"{where}: level 0 y/x {kind} {mine[-2:]} differs from the image's {theirs[-2:]}; "
                        "the labels would not overlay the image"
                    )


def validate_ome_zarr(path: str | os.PathLike[str]) -> list[str]:
    """List the ways an OME-Zarr image at ``path`` departs from the OME-Zarr 0.5 spec.

    Parameters
    ----------
    path : str or os.PathLike
        Folder of the store.

    Returns
    -------
    list of str
        One message per problem; empty when the store is a valid OME-Zarr 0.5 image (zarr
        format 3, ``ome.version`` 0.5, valid multiscales with existing levels of matching
        dimensionality, positive scales and halving shapes, consistent ``omero`` and labels whose
        level 0 shares the image's y/x shape, scale and translation).
    """
    path = Path(path)
    try:
        root = zarr.open_group(store=str(path), mode="r")
    except (OSError, ValueError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as exc:
        return [f"{path}: not a zarr group ({exc})"]
    problems: list[str] = []
    if root.metadata.zarr_format != 3:
        problems.append(f"root: zarr_format is {root.metadata.zarr_format}, OME-Zarr 0.5 needs 3")
        return problems
    ome = _ome(root, "root", problems)
    if ome is None:
        return problems
    shapes, image_transform = _check_multiscales(root, ome, "root", problems)
    image_shape = shapes[0] if shapes else None
    if "omero" in ome:
        axes = ome["multiscales"][0].get("axes", []) if isinstance(ome.get("multiscales"), list) and ome["multiscales"] else []
        c_axis = [i for i, a in enumerate(axes) if isinstance(a, dict) and a.get("type") == "channel"]
        n_channels = image_shape[c_axis[0]] if c_axis and image_shape else None
        _check_omero(ome["omero"], n_channels, problems)
    _check_labels(root, image_shape, image_transform, problems)
    return problems
