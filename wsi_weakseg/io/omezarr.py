"""OME-Zarr 0.5 (zarr v3) output: a probability image with its nucleus label image, as pyramids.

Layout written by :class:`OmeZarrWriter`::

    <path>/zarr.json              ome: version 0.5, multiscales (c, y, x), omero channels
    <path>/0, 1, ...              uint8 image levels (c, y, x), value = round(255 * p)
    <path>/labels/zarr.json       ome: labels ["nuclei"]
    <path>/labels/nuclei/0, ...   uint32 instance labels (y, x), 0 = background

Level ``k`` has pixel size ``mpp * 2**k`` micrometres and shape ``ceil(shape / 2**k)``.

Registration (OME-NGFF 0.5 ``coordinateTransformations``, micrometres): NGFF puts the *centre* of the pixel
with index ``i`` at ``i * scale + translation``. Level 0 is the working grid: its translation ``t0`` is the
centre of working pixel (0, 0) in the slide's NGFF frame, the frame in which the slide's own level-0 pixel
``i`` is centred at ``i * mpp_level0`` (see :func:`grid_translation_um`). Image level ``k`` is a ``2**k``
mean of working pixels ``[j 2**k, (j + 1) 2**k)``, so its pixel ``j`` is centred at working index
``j 2**k + (2**k - 1) / 2``: ``translation_k = t0 + (2**k - 1) / 2 * mpp``. Label level ``k`` is the stride
subsample ``level0[::2**k, ::2**k]``: its pixel ``j`` *is* working pixel ``j 2**k``, so
``translation_k = t0`` at every level.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from wsi_weakseg.errors import ConfigError, OutputError
from wsi_weakseg.io._omezarr_validate import validate_ome_zarr

__all__ = ["OmeZarrWriter", "grid_translation_um", "level_transforms", "validate_ome_zarr"]

log = logging.getLogger(__name__)

OME_VERSION = "0.5"
#: Display colours (RRGGBB) cycled over the channels, for viewers that read ``omero``.
_COLORS = ("FF00FF", "00FFFF", "FFFF00", "FF0000", "00FF00", "0000FF")


def _compressor() -> BloscCodec:
    """Blosc/zstd with byte shuffle: read by zarr-python, napari, zarr-java (QuPath) and tensorstore."""
    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def _axes(channel: bool) -> list[dict[str, str]]:
    space = [{"name": n, "type": "space", "unit": "micrometer"} for n in ("y", "x")]
    return ([{"name": "c", "type": "channel"}] if channel else []) + space


def grid_translation_um(
    offset_level0_yx: tuple[float, float], scale: float, mpp_level0: float
) -> tuple[float, float]:
    """NGFF translation (µm) of a working grid's level 0, from where the grid sits on the slide.

    Parameters
    ----------
    offset_level0_yx : tuple of float
        ``(y, x)`` of the working grid's top-left corner in level-0 pixels of the slide, in the continuous
        convention (slide pixel ``i`` spans ``[i, i + 1)``), e.g. ``WorkingView.origin`` minus the bounds
        origin for the frame QuPath shows.
    scale : float
        Level-0 pixels per working pixel (``mpp / mpp_level0``).
    mpp_level0 : float
        The slide's level-0 pixel size in µm.

    Returns
    -------
    tuple of float
        ``(y, x)`` in µm: the centre of working pixel (0, 0) in the slide's NGFF frame, where slide pixel
        ``i`` is centred at ``i * mpp_level0``. Working pixel 0 spans slide ``[o, o + scale)``, centred at
        continuous ``o + scale / 2``, i.e. slide index ``o + (scale - 1) / 2``.

    Examples
    --------
    A 0.5 µm/px grid starting 10 level-0 pixels into a 0.25 µm/px slide: pixel 0 covers slide pixels
    10 and 11, centred at index 10.5, i.e. 2.625 µm.

    >>> grid_translation_um((10, 0), 2.0, 0.25)
    (2.625, 0.125)
    """
    return tuple(float(mpp_level0 * (o + (scale - 1) / 2)) for o in offset_level0_yx)  # type: ignore[return-value]


def level_transforms(
    n_levels: int, mpp: float, translation_um: tuple[float, float], *, channel: bool, pooled: bool
) -> list[list[dict[str, Any]]]:
    """``coordinateTransformations`` of each level: ``scale`` then ``translation`` (µm).

    Parameters
    ----------
    n_levels : int
        Number of levels; level ``k`` has pixel size ``mpp * 2**k``.
    mpp : float
        Level-0 (working) pixel size in µm.
    translation_um : tuple of float
        ``(y, x)`` centre of level-0 pixel (0, 0), µm.
    channel : bool
        Prepend a channel axis (scale 1, translation 0).
    pooled : bool
        True for levels made by ``2**k`` mean pooling (pixel centre shifts by ``(2**k - 1) / 2`` working
        pixels), False for stride subsampling (no shift).
    """
    out = []
    for k in range(n_levels):
        size = mpp * 2**k
        shift = (2**k - 1) / 2 * mpp if pooled else 0.0
        scale = ([1.0] if channel else []) + [size, size]
        translation = ([0.0] if channel else []) + [float(t) + shift for t in translation_um]
        out.append([{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}])
    return out


def _multiscale(
    name: str, n_levels: int, mpp: float, translation_um: tuple[float, float], *, channel: bool, method: str
) -> dict[str, Any]:
    transforms = level_transforms(n_levels, mpp, translation_um, channel=channel, pooled=method == "mean")
    datasets = [{"path": str(k), "coordinateTransformations": t} for k, t in enumerate(transforms)]
    return {"name": name, "axes": _axes(channel), "datasets": datasets, "type": method}


def _level_shapes(shape_yx: tuple[int, int], min_size: int) -> list[tuple[int, int]]:
    """Shapes of the pyramid: halve (rounding up) until the largest side is <= ``min_size``."""
    shapes = [shape_yx]
    while max(shapes[-1]) > min_size:
        y, x = shapes[-1]
        shapes.append(((y + 1) // 2, (x + 1) // 2))
    return shapes


def _mean2x2(level: da.Array) -> da.Array:
    """2x2 mean of a (c, y, x) uint8 dask array, rounded half up; odd edges average what exists."""
    _, y, x = level.shape
    padded = da.pad(level, ((0, 0), (0, y % 2), (0, x % 2)), mode="edge")
    total = da.coarsen(np.sum, padded.astype(np.uint16), {1: 2, 2: 2})
    return ((total + 2) // 4).astype(np.uint8)


class OmeZarrWriter:
    """Create an OME-Zarr 0.5 store that the engine fills block by block, then pyramid it.

    Parameters
    ----------
    path : str or os.PathLike
        Folder of the store (created; it must not exist or be empty).
    shape_yx : tuple of int
        ``(height, width)`` of level 0, at the model's working resolution.
    mpp : float
        Pixel size of level 0 in micrometres.
    channels : Sequence of str
        Channel names of the probability image, e.g. ``("foreground", "centre")``.
    chunk : int, optional
        Chunk side of the image arrays (and of the labels unless ``label_chunk`` is given).
    label_chunk : int, optional
        Chunk side of the label arrays.
    labels : Sequence of str, optional
        Names of the label images, ``("nuclei",)`` by default.
    name : str, optional
        Name of the multiscale image (e.g. the slide name).
    translation_um : tuple of float, optional
        ``(y, x)`` in µm where the centre of level-0 pixel (0, 0) lies in the slide's NGFF frame
        (from :func:`grid_translation_um`); ``(0, 0)`` when level 0 is the slide's own level-0 grid.
    resume : bool, optional
        When ``path`` holds a store of the same layout (an interrupted run's), keep its level-0 image (the
        tiles already predicted) and recreate the labels and pyramid; :class:`OutputError` if the layout differs.

    Attributes
    ----------
    image : zarr.Array
        Level 0 of the image, ``(c, y, x)`` uint8, chunks ``(1, chunk, chunk)``.
    labels : dict of str to zarr.Array
        Level 0 of each label image, ``(y, x)`` uint32.
    root : zarr.Group
        The store's root group.

    Raises
    ------
    OutputError
        If the folder cannot be created, or already holds something.
    ConfigError
        If a shape, size, pixel size or name is invalid.

    Notes
    -----
    Until :meth:`finalize` the store is already a valid single-level OME-Zarr image.
    Arrays are filled with ``arr[:, y0:y1, x0:x1] = block``; chunks never written stay absent
    (read as 0), so regions without tissue cost nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape_yx: tuple[int, int],
        mpp: float,
        channels: Sequence[str],
        *,
        chunk: int = 512,
        label_chunk: int | None = None,
        labels: Sequence[str] = ("nuclei",),
        name: str = "",
        translation_um: tuple[float, float] = (0.0, 0.0),
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.shape_yx = (int(shape_yx[0]), int(shape_yx[1]))
        self.mpp = float(mpp)
        self.channels = [str(c) for c in channels]
        self.chunk = int(chunk)
        self.label_chunk = int(label_chunk) if label_chunk is not None else self.chunk
        self.name = str(name)
        self.translation_um = tuple(float(t) for t in translation_um)
        label_names = [str(n) for n in labels]
        if len(shape_yx) != 2 or min(self.shape_yx) < 1:
            raise ConfigError(f"shape_yx must be two positive sizes, got {tuple(shape_yx)}")
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"mpp must be a positive pixel size in micrometres, got {mpp}")
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ConfigError(f"channels must be non-empty and unique, got {self.channels}")
        if len(self.translation_um) != 2 or not all(math.isfinite(t) for t in self.translation_um):
            raise ConfigError(f"translation_um must be two finite numbers (y, x) in µm, got {translation_um}")
        if self.chunk < 1 or self.label_chunk < 1:
            raise ConfigError(f"chunk sizes must be positive, got {chunk} and {label_chunk}")
        bad = [n for n in label_names if not n or "/" in n or n.startswith(".") or label_names.count(n) > 1]
        if bad:
            raise ConfigError(f"label names must be unique, non-empty, without '/' or a leading '.', got {bad}")
        exists = self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir()))
        if exists and not resume:
            raise OutputError(f"cannot create OME-Zarr at {self.path}: it already exists; remove it or choose another")
        try:
            if exists:
                self._reopen()
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self.root = zarr.create_group(store=str(self.path), zarr_format=3)
                self.image = self.root.create_array(
                    "0",
                    shape=(len(self.channels), *self.shape_yx),
                    dtype="uint8",
                    chunks=(1, self.chunk, self.chunk),
                    dimension_names=["c", "y", "x"],
                    compressors=[_compressor()],
                    fill_value=0,
                )
            labels_group = self.root.create_group("labels")
            self.labels: dict[str, zarr.Array] = {}
            for label in label_names:
                group = labels_group.create_group(label)
                self.labels[label] = group.create_array(
                    "0",
                    shape=self.shape_yx,
                    dtype="uint32",
                    chunks=(self.label_chunk, self.label_chunk),
                    dimension_names=["y", "x"],
                    compressors=[_compressor()],
                    fill_value=0,
                )
            self._write_metadata(1)
        except OSError as exc:
            raise OutputError(f"cannot create OME-Zarr at {self.path}: {exc}; choose a writable folder") from exc
        log.debug("opened OME-Zarr %s: %s x %s, channels %s", self.path, len(self.channels), self.shape_yx,
                  self.channels)

    def _reopen(self) -> None:
        """Keep level 0 of the image of a store this writer made with the same layout; drop all else."""
        self.root = zarr.open_group(store=str(self.path), mode="r+", zarr_format=3)
        image = self.root.get("0")
        layout = ((len(self.channels), *self.shape_yx), np.dtype("uint8"), (1, self.chunk, self.chunk))
        if not isinstance(image, zarr.Array) or (image.shape, image.dtype, image.chunks) != layout:
            raise OutputError(f"cannot resume the OME-Zarr at {self.path}: its level 0 is not the image this run "
                              "writes; delete it and run again")
        self.image = image
        for name in [n for n in self.root.keys() if n != "0"]:
            del self.root[name]  # pyramid levels and labels: always rewritten

    def _write_metadata(self, n_levels: int) -> None:
        omero = {
            "channels": [
                {
                    "label": label,
                    "color": _COLORS[k % len(_COLORS)],
                    "active": True,
                    "coefficient": 1.0,
                    "family": "linear",
                    "inverted": False,
                    "window": {"min": 0, "max": 255, "start": 0, "end": 255},
                }
                for k, label in enumerate(self.channels)
            ],
            "rdefs": {"model": "color", "defaultT": 0, "defaultZ": 0},
        }
        image_ms = _multiscale(self.name, n_levels, self.mpp, self.translation_um, channel=True, method="mean")
        self.root.attrs.put({"ome": {"version": OME_VERSION, "multiscales": [image_ms], "omero": omero}})
        labels_group = self.root["labels"]
        labels_group.attrs.put({"ome": {"version": OME_VERSION, "labels": list(self.labels)}})
        for label in self.labels:
            label_ms = _multiscale(label, n_levels, self.mpp, self.translation_um, channel=False, method="nearest")
            labels_group[label].attrs.put(
                {
                    "ome": {
                        "version": OME_VERSION,
                        "image-label": {"source": {"image": "../../"}},
                        "multiscales": [label_ms],
                    }
                }
            )

    def finalize(self, min_size: int = 256) -> None:
        """Build the pyramids blockwise and write the final OME-Zarr metadata.

        Parameters
        ----------
        min_size : int, optional
            Halve until the largest side of a level is at most this many pixels.

        Notes
        -----
        Image level ``k + 1`` is the 2x2 mean of level ``k`` rounded half up,
        ``(a + b + c + d + 2) // 4``; an odd last row or column averages the pixels that exist.
        Label level ``k + 1`` is ``level_k[::2, ::2]`` (nearest; no ids are invented). Each level
        is read back from the store chunk by chunk with dask, never whole. The translations of the two
        pyramids differ accordingly (see the module docstring).
        """
        if min_size < 1:
            raise ConfigError(f"min_size must be at least 1, got {min_size}")
        shapes = _level_shapes(self.shape_yx, int(min_size))
        c = len(self.channels)
        try:
            previous = self.image
            for k, shape in enumerate(shapes[1:], start=1):
                source = da.from_zarr(previous)
                target = self.root.create_array(
                    str(k),
                    shape=(c, *shape),
                    dtype="uint8",
                    chunks=(1, self.chunk, self.chunk),
                    dimension_names=["c", "y", "x"],
                    compressors=[_compressor()],
                    fill_value=0,
                    overwrite=True,
                )
                # the threaded scheduler explicitly: inside a cohort's Dask worker the default would be the
                # cluster, sending each slide's pyramid out as tasks that wait for the worker they block
                da.store(_mean2x2(source).rechunk(target.chunks), target, lock=False, scheduler="threads")
                previous = target
            for label, level0 in self.labels.items():
                group = self.root["labels"][label]
                previous = level0
                for k, shape in enumerate(shapes[1:], start=1):
                    target = group.create_array(
                        str(k),
                        shape=shape,
                        dtype="uint32",
                        chunks=(self.label_chunk, self.label_chunk),
                        dimension_names=["y", "x"],
                        compressors=[_compressor()],
                        fill_value=0,
                        overwrite=True,
                    )
                    da.store(da.from_zarr(previous)[::2, ::2].rechunk(target.chunks), target, lock=False,
                             scheduler="threads")
                    previous = target
            self._write_metadata(len(shapes))
        except OSError as exc:
            raise OutputError(f"writing the OME-Zarr pyramid at {self.path} failed: {exc}") from exc
        log.info("finalized OME-Zarr %s with %d levels", self.path, len(shapes))
