"""Exactly-once blockwise instance extraction over the whole slide.

The slide's maps are cut into square *blocks* (half-open cores, whole working pixels). A nucleus is
*anchored* at its marker, a single pixel in global coordinates; the block whose core holds the anchor owns
the nucleus and is the only one that emits it. Each block reads its core plus a halo of
:attr:`InstanceParams.halo` pixels, which by the locality of every rule in
:mod:`~wsi_weakseg.engine.instances` contains the whole nucleus, every marker competing for its pixels and the
data those markers depend on. So each block computes exactly what a whole-image run computes, for its own
nuclei and for the label of every pixel of its core. Each block writes the label *keys* of its core into
one zarr chunk of its own (no two writers share a chunk) and its owned nuclei to a small file.

Ids are then global and consecutive: the rank of each anchor in raster order. They depend only on the
slide and model, not on tile or block sizes, so the label map and the GeoJSON are identical whatever the
layout. The assumption is stated by the model card: no pixel of a nucleus is farther from its marker than the
geodesic cost budget ``max_reach_um``; a nucleus whose region is cut at that budget is counted and warned about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ProcessingError
from ..io.polygons import valid_ragged
from .anchored import AnchoredParams, label_anchored
from .instances import (
    InstanceParams,
    assign_pixels,
    clean_labels,
    find_markers,
)
from .outlines import trace_flat
from .records import (  # noqa: F401
    BlockNuclei,
    Nucleus,
    iter_nuclei,
    iter_texts,
    load_core_keys,
    load_summary,
    record_path,
    save_block,
)
from .smooth import DEFAULT_TOLERANCE, smooth_ragged

if TYPE_CHECKING:
    from .features import DetectionFormat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockResult:
    """What a block hands back to the driver: small, whatever the block size."""

    index: tuple[int, int]
    keys: np.ndarray  # sorted anchor keys of the nuclei it owns
    n_oversized: int
    n_repaired: int = 0  # owned nuclei whose traced polygon was invalid and was repaired (see valid_polygons)


@dataclass(frozen=True)
class Window:
    """A block's core and the window read around it, clipped to the image (global working pixels).

    Out-of-image pixels hold no nucleus and block no path, so a window clipped at the image edge labels
    its pixels as one padded with zeros would; only markers near a *cut* window edge are unreliable.
    """

    y0: int
    x0: int
    y1: int
    x1: int  # the core [y0, y1) x [x0, x1)
    wy0: int
    wx0: int
    wy1: int
    wx1: int  # the window [wy0, wy1) x [wx0, wx1)
    image_shape: tuple[int, int]

    @classmethod
    def of(cls, shape: tuple[int, int], by: int, bx: int, block: int, halo: int) -> Window:
        H, W = shape
        y0, x0 = by * block, bx * block
        y1, x1 = min(y0 + block, H), min(x0 + block, W)
        return cls(y0, x0, y1, x1, max(y0 - halo, 0), max(x0 - halo, 0), min(y1 + halo, H), min(x1 + halo, W), (H, W))

    def reliable(self, markers: np.ndarray, r: int) -> np.ndarray:
        """Markers (window rows, cols) at least ``r`` from every window edge that is not an image edge."""
        H, W = self.image_shape
        h, w = self.wy1 - self.wy0, self.wx1 - self.wx0
        rows, cols = markers[:, 0], markers[:, 1]
        return (((rows >= r) | (self.wy0 == 0)) & ((rows < h - r) | (self.wy1 == H))
                & ((cols >= r) | (self.wx0 == 0)) & ((cols < w - r) | (self.wx1 == W)))

    def owns(self, markers: np.ndarray) -> np.ndarray:
        """Markers (window rows, cols) in the core."""
        rows, cols = markers[:, 0] + self.wy0, markers[:, 1] + self.wx0
        return (rows >= self.y0) & (rows < self.y1) & (cols >= self.x0) & (cols < self.x1)


def label_window(win: np.ndarray, window: Window, params: InstanceParams, anchor_filter=None):
    """The instance rules on one window: (labels, markers, oversized flags), labels indexing ``markers``.

    The rules are the model type's: markers and geodesic assignment on dense maps, or the anchors a
    detect-segment model's maps point at (:func:`~.anchored.label_anchored`, for :class:`~.anchored.AnchoredParams`).
    """
    if isinstance(params, AnchoredParams):
        labels, markers, flags = label_anchored(win, params, (window.wy0, window.wx0))
    else:
        fg, centre = win[0], win[1]
        markers = find_markers(centre, fg, params)
        markers = markers[window.reliable(markers, params.peak_radius)]
        labels, flags = assign_pixels(centre, fg, markers, params, (window.wy0, window.wx0), window.image_shape[1])
        labels = clean_labels(labels, markers, params)
    if anchor_filter is not None and len(markers):
        rejected = np.concatenate([[False], ~anchor_filter(markers[:, 0] + window.wy0, markers[:, 1] + window.wx0)])
        labels[rejected[labels]] = 0
    return labels, markers, flags


def owned_nuclei(labels, markers, flags, win, window: Window, reach: int,
                 outlines: str = "pixel") -> tuple[BlockNuclei, int]:
    """The nuclei the block owns (anchor in its core, not dropped), as arrays; and how many were repaired.

    Every pixel of a nucleus lies within ``reach`` (Chebyshev) of its anchor, so measuring and tracing
    look only at the core grown by ``reach``, not at the whole window. ``outlines`` is ``"pixel"`` (the
    traced pixel edges) or ``"smooth"`` (:func:`~wsi_weakseg.engine.smooth.smooth_ragged`, before the
    validity check, so every written polygon is checked).
    """
    nm = len(markers) + 1
    owned = np.flatnonzero(window.owns(markers)) + 1 if len(markers) else np.zeros(0, np.int64)
    if owned.size == 0:
        return BlockNuclei.empty(), 0
    oy, ox = np.maximum(markers[owned - 1].min(axis=0) - reach, 0)
    ey, ex = markers[owned - 1].max(axis=0) + reach + 1
    crop, fg = labels[oy:ey, ox:ex], win[0, oy:ey, ox:ex]
    area = np.bincount(crop.ravel(), minlength=nm)
    owned = owned[area[owned] > 0]  # some were dropped by clean-up (too small) or the anchor filter
    if owned.size == 0:
        return BlockNuclei.empty(), 0
    fg_sum = np.bincount(crop.ravel(), weights=fg.ravel(), minlength=nm)
    traced, xy, ring_starts, poly_starts = trace_flat(crop, owned)
    if outlines == "smooth":
        xy, ring_starts, poly_starts = smooth_ragged(xy, ring_starts, poly_starts, DEFAULT_TOLERANCE)
    # Valid by construction (clean_labels leaves no saddle); checked anyway, because one invalid polygon
    # makes QuPath reject the whole file. Checked in working pixels, where vertices lie on the pixel-corner
    # grid (pixel outlines) or the half-pixel grid (smooth outlines: edge midpoints).
    xy, ring_starts, poly_starts, repaired = valid_ragged(xy, ring_starts, poly_starts)
    anchors = markers[owned - 1] + (window.wy0, window.wx0)
    if repaired.any():
        log.warning(
            "block at (row, col) (%d, %d): %d nucleus outline(s) were invalid polygons and were repaired (largest "
            "valid part kept; the label map is unchanged), e.g. the nucleus anchored at (row, col) %s",
            window.y0, window.x0, int(repaired.sum()), tuple(anchors[repaired][0].tolist()),
        )
    W = window.image_shape[1]
    return BlockNuclei(
        keys=(anchors[:, 0] * W + anchors[:, 1] + 1).astype(np.int64),
        anchors=anchors.astype(np.int64),
        area_px=area[owned].astype(np.int64),
        mean_foreground=fg_sum[owned] / area[owned] / 255.0,
        centre_score=win[1][markers[owned - 1, 0], markers[owned - 1, 1]] / 255.0,
        oversized=flags[owned],
        xy=xy + (window.wx0 + ox, window.wy0 + oy),
        ring_starts=ring_starts,
        poly_starts=poly_starts,
    ), int(repaired.sum())


def process_block(
    maps,
    keys_out,
    by: int,
    bx: int,
    block: int,
    params: InstanceParams,
    record_dir: Path,
    anchor_filter: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    formatter: DetectionFormat | None = None,
    outlines: str = "pixel",
) -> BlockResult:
    """Compute one block: label keys of its core into ``keys_out`` and its owned nuclei into a file.

    Parameters
    ----------
    maps : array-like (K, H, W) uint8
        Foreground and centre maps (a zarr array; only the window is read), plus the anchor offsets of a
        detect-segment model (:mod:`.anchored`).
    keys_out : array-like (H, W) uint32
        Label keys, chunked by ``block`` so this block is its only writer.
    by, bx : int
        Block row and column.
    block : int
        Block core size (working pixels).
    params : InstanceParams
    record_dir : Path
        Folder receiving the block's record (:func:`~.records.save_block`), written last: a block whose
        record exists is finished, its key chunk included.
    anchor_filter : callable, optional
        ``f(rows, cols) -> bool array`` on global anchor positions; nuclei it rejects (e.g. outside a
        region of interest) are removed after they competed for pixels, so the others keep their shape.
    formatter : DetectionFormat, optional
        Serialises the owned nuclei here, in the worker (:meth:`~wsi_weakseg.engine.features.DetectionFormat.format_block`).
    outlines : {"pixel", "smooth"}
        Outline mode (:func:`owned_nuclei`); each outline depends only on its nucleus's pixels.
    """
    w = Window.of(tuple(maps.shape[1:]), by, bx, block, params.halo)
    win = np.ascontiguousarray(maps[:, w.wy0 : w.wy1, w.wx0 : w.wx1], dtype=np.uint8)
    labels, markers, flags = label_window(win, w, params, anchor_filter)
    marker_keys = np.concatenate([[0], (markers[:, 0] + w.wy0) * w.image_shape[1] + markers[:, 1] + w.wx0 + 1])
    # the chunk holds window-local labels (uint32); the record holds their anchor keys (write_label_ids)
    keys_out[w.y0 : w.y1, w.x0 : w.x1] = labels[w.y0 - w.wy0 : w.y1 - w.wy0, w.x0 - w.wx0 : w.x1 - w.wx0]
    nuclei, n_repaired = owned_nuclei(labels, markers, flags, win, w, params.reach, outlines)
    if formatter is not None:
        nuclei = formatter.format_block(nuclei)
    save_block(record_dir, (by, bx), nuclei, n_repaired, marker_keys)
    return BlockResult(index=(by, bx), keys=nuclei.keys, n_oversized=int(nuclei.oversized.sum()),
                       n_repaired=n_repaired)


def finished_blocks(record_dir: Path, blocks: list[tuple[int, int]]) -> list[BlockResult]:
    """Results of the ``blocks`` whose record an earlier run of the same work left (:mod:`.resume`)."""
    results = []
    for index in blocks:
        if record_path(record_dir, index).exists():
            keys, n_oversized, n_repaired = load_summary(record_dir, index)
            results.append(BlockResult(index, keys, n_oversized, n_repaired))
    return results


def block_grid(shape: tuple[int, int], block: int) -> list[tuple[int, int]]:
    """Block (row, col) indices covering an image of ``shape``."""
    ny, nx = -(-shape[0] // block), -(-shape[1] // block)
    return [(by, bx) for by in range(ny) for bx in range(nx)]


def keys_to_ids(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Map anchor keys to consecutive ids (1-based rank); 0 stays 0.

    Parameters
    ----------
    keys : ndarray of int64
        Label keys (one block of the key map); 0 is background.
    sorted_keys : ndarray of int64
        Sorted anchor keys of every emitted nucleus.

    Returns
    -------
    ndarray of uint32
        ``rank + 1`` of each key in ``sorted_keys``, 0 for background.

    Raises
    ------
    ProcessingError
        If a non-zero key is not in ``sorted_keys``: a pixel labelled with a nucleus no block emitted,
        i.e. blocks disagreed (locality broken). Without the check it would silently take the id of
        the next nucleus in raster order.

    Examples
    --------
    >>> keys_to_ids(np.array([0, 57, 12]), np.array([12, 57])).tolist()
    [0, 2, 1]
    """
    fg = keys > 0
    pos = np.searchsorted(sorted_keys, keys)
    if sorted_keys.size:
        found = sorted_keys[np.minimum(pos, sorted_keys.size - 1)] == keys
    else:
        found = np.zeros(keys.shape, dtype=bool)
    missing = fg & ~found
    if missing.any():
        bad = np.unique(keys[missing])
        raise ProcessingError(
            f"{int(missing.sum())} label pixel(s) carry {bad.size} anchor key(s) of no emitted nucleus "
            f"(e.g. key {int(bad[0])} = row * width + col + 1): blocks disagreed about a nucleus, so the "
            "exactly-once merge lost locality (a nucleus larger than the card's max_reach_um?); "
            "this is a bug, please report it with the slide and model"
        )
    return np.where(fg, pos + 1, 0).astype(np.uint32)


def write_label_ids(local_arr, labels_arr, sorted_keys: np.ndarray, record_dir: Path, block: int,
                    num_workers: int = 1) -> None:
    """Blockwise relabelling into consecutive ids: each block's local labels through its key table.

    A block's chunk of ``local_arr`` holds window-local labels and its record the anchor key of each
    (:func:`process_block`), so a block costs a lookup of its few hundred keys, not a search per pixel.
    Every local label present in the chunk must be a nucleus some block emitted (:func:`keys_to_ids`).
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(index: tuple[int, int]) -> None:
        rows = slice(index[0] * block, (index[0] + 1) * block)
        cols = slice(index[1] * block, (index[1] + 1) * block)
        local = np.asarray(local_arr[rows, cols])
        table = load_core_keys(record_dir, index)
        used = np.bincount(local.ravel(), minlength=table.size)[: table.size] > 0
        used[0] = False
        ids = np.zeros(table.size, np.uint32)
        ids[used] = keys_to_ids(table[used], sorted_keys)
        labels_arr[rows, cols] = ids[local]

    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        list(pool.map(one, block_grid(tuple(local_arr.shape), block)))
