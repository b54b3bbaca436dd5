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

import dataclasses
import functools
import heapq
import logging
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ProcessingError
from ..io.geojson import valid_polygons
from .instances import InstanceParams, assign_pixels, clean_labels, find_markers, oversized
from .outlines import trace_outlines

if TYPE_CHECKING:
    from .features import DetectionFormat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Nucleus:
    """One owned nucleus, in working pixels (global frame)."""

    key: int  # raster key of the anchor, row * width + col + 1
    anchor: tuple[int, int]  # (row, col)
    rings: list[np.ndarray]  # closed (x, y) outlines on pixel edges: exterior, then holes (enclosed nuclei)
    area_px: int
    mean_foreground: float
    centre_score: float
    oversized: bool
    text: tuple[str, str] | None = None  # serialised feature around its id (see engine.features)


@dataclass(frozen=True)
class BlockResult:
    """What a block hands back to the driver: small, whatever the block size."""

    index: tuple[int, int]
    keys: np.ndarray  # sorted anchor keys of the nuclei it owns
    n_oversized: int
    n_repaired: int = 0  # owned nuclei whose traced polygon was invalid and was repaired (see valid_polygons)


def read_window(maps, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Read ``maps[:, y0:y0+h, x0:x0+w]``, zero outside the image (out-of-image pixels hold no nucleus)."""
    _, H, W = maps.shape
    out = np.zeros((maps.shape[0], h, w), dtype=np.uint8)
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    if ya < yb and xa < xb:
        out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = maps[:, ya:yb, xa:xb]
    return out


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
) -> BlockResult:
    """Compute one block: label keys of its core into ``keys_out`` and its owned nuclei into a file.

    Parameters
    ----------
    maps : array-like (2, H, W) uint8
        Foreground and centre maps (a zarr array; only the window is read).
    keys_out : array-like (H, W) int64
        Label keys, chunked by ``block`` so this block is its only writer.
    by, bx : int
        Block row and column.
    block : int
        Block core size (working pixels).
    params : InstanceParams
    record_dir : Path
        Folder receiving ``{by}_{bx}.pkl`` with the owned :class:`Nucleus` list in key order.
    anchor_filter : callable, optional
        ``f(rows, cols) -> bool array`` on global anchor positions; nuclei it rejects (e.g. outside a
        region of interest) are removed after they competed for pixels, so the others keep their shape.
    formatter : DetectionFormat, optional
        Serialises the owned nuclei here, in the worker (:meth:`~wsi_weakseg.engine.features.DetectionFormat.format_block`).
    """
    _, H, W = maps.shape
    halo = params.halo
    y0, x0 = by * block, bx * block
    y1, x1 = min(y0 + block, H), min(x0 + block, W)
    wy, wx = y0 - halo, x0 - halo
    win = read_window(maps, wy, wx, (y1 - y0) + 2 * halo, (x1 - x0) + 2 * halo)
    fg, centre = win[0], win[1]
    markers = find_markers(centre, fg, params)
    r = params.peak_radius
    h, w = fg.shape
    ok = (markers[:, 0] >= r) & (markers[:, 0] < h - r) & (markers[:, 1] >= r) & (markers[:, 1] < w - r)
    markers = markers[ok]
    labels, owner, cost = assign_pixels(centre, fg, markers, params, (wy, wx), W)
    labels = clean_labels(labels, markers, params)
    if anchor_filter is not None and len(markers):
        rejected = np.concatenate([[False], ~anchor_filter(markers[:, 0] + wy, markers[:, 1] + wx)])
        labels[rejected[labels]] = 0
    flags = oversized(owner, cost, len(markers), params)
    marker_keys = np.concatenate([[0], (markers[:, 0] + wy) * W + markers[:, 1] + wx + 1]).astype(np.int64)
    core = labels[halo : halo + (y1 - y0), halo : halo + (x1 - x0)]
    keys_out[y0:y1, x0:x1] = marker_keys[core]

    owned = np.nonzero(
        (markers[:, 0] >= halo) & (markers[:, 0] < halo + (y1 - y0))
        & (markers[:, 1] >= halo) & (markers[:, 1] < halo + (x1 - x0))
    )[0] + 1 if len(markers) else np.zeros(0, np.int64)
    nm = len(markers) + 1
    area = np.bincount(labels.ravel(), minlength=nm)
    owned = owned[area[owned] > 0]  # some were dropped by clean-up (too small) or the anchor filter
    fg_sum = np.bincount(labels.ravel(), weights=fg.ravel(), minlength=nm)
    rings = trace_outlines(labels, owned)
    # Valid by construction (clean_labels leaves no saddle); checked anyway, because one invalid polygon
    # makes QuPath reject the whole file. Checked in working pixels, where corners are integers.
    checked, repaired = valid_polygons([rings[i] for i in owned.tolist()])
    rings = dict(zip(owned.tolist(), checked))
    if repaired.any():
        log.warning(
            "block (%d, %d): %d nucleus outline(s) were invalid polygons and were repaired (largest valid part "
            "kept; the label map is unchanged), e.g. the nucleus anchored at (row, col) %s",
            by, bx, int(repaired.sum()), tuple(int(v) for v in markers[owned[repaired][0] - 1] + (wy, wx)),
        )
    offset = np.array([wx, wy], dtype=np.float64)
    nuclei = []
    for idx in owned.tolist():
        my, mx = int(markers[idx - 1, 0]), int(markers[idx - 1, 1])
        nuclei.append(
            Nucleus(
                key=int(marker_keys[idx]),
                anchor=(wy + my, wx + mx),
                rings=[r + offset for r in rings[idx]],
                area_px=int(area[idx]),
                mean_foreground=float(fg_sum[idx] / area[idx] / 255.0),
                centre_score=float(centre[my, mx] / 255.0),
                oversized=bool(flags[idx]),
            )
        )
    if formatter is not None:
        nuclei = [dataclasses.replace(n, text=t) for n, t in zip(nuclei, formatter.format_block(nuclei))]
    with open(record_dir / f"{by}_{bx}.pkl", "wb") as fh:
        pickle.dump(nuclei, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return BlockResult(
        index=(by, bx),
        keys=np.array([n.key for n in nuclei], dtype=np.int64),
        n_oversized=sum(n.oversized for n in nuclei),
        n_repaired=int(repaired.sum()),
    )


def block_grid(shape: tuple[int, int], block: int) -> list[tuple[int, int]]:
    """Block (row, col) indices covering an image of ``shape``."""
    ny, nx = -(-shape[0] // block), -(-shape[1] // block)
    return [(by, bx) for by in range(ny) for bx in range(nx)]


def run_blocks(
    maps,
    keys_out,
    block: int,
    params: InstanceParams,
    record_dir: Path,
    blocks: list[tuple[int, int]] | None = None,
    num_workers: int = 1,
    on_done: Callable[[], None] | None = None,
    anchor_filter: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    formatter: DetectionFormat | None = None,
) -> list[BlockResult]:
    """Process every block as an independent dask task.

    Tasks run on dask's threaded scheduler. Each block writes only its own zarr chunk and record file, so
    any scheduler is safe; but skimage's Dijkstra holds the GIL, so threads overlap only I/O and numpy.
    A process pool was measured slower on 2 cores (spawn + imports ~2 s per worker) and breaks scripts
    without an ``if __name__ == "__main__"`` guard, so slide-level parallelism belongs to the cohort runner.
    """
    import dask
    from dask.callbacks import Callback

    blocks = block_grid(maps.shape[1:], block) if blocks is None else blocks
    record_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        dask.delayed(process_block)(maps, keys_out, by, bx, block, params, record_dir, anchor_filter, formatter)
        for by, bx in blocks
    ]

    class _Tick(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401 - dask hook
            if on_done is not None and isinstance(result, BlockResult):
                on_done()

    with _Tick():
        results = dask.compute(*tasks, scheduler="threads", num_workers=max(1, num_workers))
    return list(results)


def iter_nuclei(record_dir: Path, blocks: list[tuple[int, int]]) -> Iterator[Nucleus]:
    """All owned nuclei in global raster order of their anchors, one block row in memory at a time."""
    rows: dict[int, list[tuple[int, int]]] = {}
    for by, bx in blocks:
        rows.setdefault(by, []).append((by, bx))
    for by in sorted(rows):
        streams = []
        for b in sorted(rows[by]):
            with open(record_dir / f"{b[0]}_{b[1]}.pkl", "rb") as fh:
                streams.append(pickle.load(fh))
        yield from heapq.merge(*streams, key=lambda n: n.key)


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


def write_label_ids(keys_arr, labels_arr, sorted_keys: np.ndarray, num_workers: int = 1) -> None:
    """Blockwise key -> id relabelling from one zarr array into another of the same chunking."""
    import dask.array as da

    src = da.from_zarr(keys_arr)
    ids = src.map_blocks(functools.partial(keys_to_ids, sorted_keys=sorted_keys), dtype=np.uint32)
    da.store(ids, labels_arr, lock=False, scheduler="threads", num_workers=max(1, num_workers))
