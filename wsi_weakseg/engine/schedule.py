"""The instance stage, overlapped with inference: each merge block starts once the maps under its window are final.

A block reads its core plus halo (:class:`~.merge.Window`); the maps there are final once every planned
tile whose core meets the window is written (tiles never planned stay 0, in every run). So while the model
infers tile after tile, :class:`InstanceStage` counts, per block, the tiles it still waits for and hands it
to a thread pool the moment that count reaches zero. The blocks' compiled kernels release the GIL, so they
run beside the forward pass (on a GPU, the post-processing hides behind inference). Each block computes
exactly what it computes after a complete inference: the outputs do not depend on the overlap (the
exactly-once oracles run through this path).

Blocks finished by an interrupted run (their record exists, :mod:`.resume`) are reused, not recomputed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ProcessingError
from .instances import InstanceParams
from .merge import (
    BlockResult,
    Window,
    block_grid,
    finished_blocks,
    process_block,
    write_label_ids,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instances:
    """What the instance stage leaves in the working folder.

    Attributes
    ----------
    blocks : list of (int, int)
        Block indices; each block's record (:func:`~.records.save_block`) holds its owned nuclei.
    record_dir : Path
    sorted_keys : numpy.ndarray
        Anchor keys of all nuclei, sorted (the rank + 1 of a key is the nucleus id).
    n_oversized : int
        Nuclei cut at the card's size limit.
    n_repaired : int
        Nuclei whose traced outline was invalid and was repaired before writing.
    n_reused : int
        Blocks finished by an interrupted earlier run.
    """

    blocks: list[tuple[int, int]]
    record_dir: Path
    sorted_keys: np.ndarray
    n_oversized: int
    n_repaired: int = 0
    n_reused: int = 0


def tiles_under(window: Window, tile: int, waiting: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The tile origins in ``waiting`` whose ``tile`` x ``tile`` core meets the window."""
    rows = range(window.wy0 // tile * tile, window.wy1, tile)
    cols = range(window.wx0 // tile * tile, window.wx1, tile)
    return [(y, x) for y in rows for x in cols if (y, x) in waiting]


class InstanceStage:
    """Run the merge blocks of ``maps`` on ``num_workers`` threads, each once its tiles are inferred.

    Parameters
    ----------
    maps : array-like (2, H, W) uint8
        The maps being written (a zarr array).
    work : Path
        Working folder: ``keys.zarr`` (window-local labels per block) and ``blocks/`` (records); what an earlier run of the
        same work left there is reused.
    params : InstanceParams
    block, num_workers : int
    waiting : iterable of (int, int), optional
        Origins of the tiles not inferred yet (default: none, every block can start at once).
    tile : int, optional
        Tile core size (needed with ``waiting``).
    on_done : callable, optional
        Called (from a worker thread) after each block.
    block_kwargs
        ``anchor_filter``, ``formatter``, ``outlines`` for :func:`~.merge.process_block`.
    """

    def __init__(self, maps, work: Path, params: InstanceParams, block: int, num_workers: int = 1,
                 waiting: Iterable[tuple[int, int]] = (), tile: int = 0,
                 on_done: Callable[[], None] | None = None, **block_kwargs) -> None:
        self.maps, self.work, self.params, self.block, self.num_workers = maps, work, params, block, num_workers
        self.keys = _keys_array(work / "keys.zarr", tuple(maps.shape[1:]), block)
        self.blocks = block_grid(tuple(maps.shape[1:]), block)
        (work / "blocks").mkdir(parents=True, exist_ok=True)
        self.reused = finished_blocks(work / "blocks", self.blocks)
        self._kwargs, self._on_done = block_kwargs, on_done
        self._pool = ThreadPoolExecutor(max(1, num_workers), thread_name_prefix="block")
        self._futures: list[Future] = []
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], int] = {}
        self._blocks_of: dict[tuple[int, int], list[tuple[int, int]]] = {}
        waiting = set(waiting)
        done = {r.index for r in self.reused}
        for index in (b for b in self.blocks if b not in done):
            deps = tiles_under(Window.of(tuple(maps.shape[1:]), *index, block, params.halo), tile, waiting) if waiting else []
            if not deps:
                self._submit(index)
                continue
            self._pending[index] = len(deps)
            for t in deps:
                self._blocks_of.setdefault(t, []).append(index)

    def __enter__(self) -> InstanceStage:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def tiles_done(self, origins: Iterable[tuple[int, int]]) -> None:
        """Tiles whose maps are written: start the blocks that waited for them last. Raises a block's failure."""
        for t in origins:
            for index in self._blocks_of.pop(tuple(t), ()):
                self._pending[index] -= 1
                if self._pending[index] == 0:
                    del self._pending[index]
                    self._submit(index)
        if self._failure is not None:
            raise self._failure

    @property
    def started(self) -> int:
        """Blocks handed to the pool so far (reused ones aside)."""
        return len(self._futures)

    def wait(self) -> list[BlockResult]:
        """Every block's result (reused ones first), once all have run; raises the first failure."""
        if self._pending:
            raise ProcessingError(f"internal error: {len(self._pending)} merge block(s) still wait for tiles "
                                  "that were never reported inferred")
        return self.reused + [f.result() for f in self._futures]

    def finish(self, labels_out) -> Instances:
        """Wait for every block; write consecutive ids into ``labels_out``; the stage's :class:`Instances`."""
        results = self.wait()
        sorted_keys = np.sort(np.concatenate([r.keys for r in results] or [np.zeros(0, np.int64)]))
        write_label_ids(self.keys, labels_out, sorted_keys, self.work / "blocks", self.block, self.num_workers)
        return Instances(self.blocks, self.work / "blocks", sorted_keys, int(sum(r.n_oversized for r in results)),
                         int(sum(r.n_repaired for r in results)), len(self.reused))

    def _submit(self, index: tuple[int, int]) -> None:
        future = self._pool.submit(process_block, self.maps, self.keys, *index, self.block, self.params,
                                   self.work / "blocks", **self._kwargs)
        future.add_done_callback(self._finished)
        self._futures.append(future)

    def _finished(self, future: Future) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            with self._lock:
                self._failure = self._failure or exc
        elif self._on_done is not None and not future.cancelled():
            self._on_done()


def _keys_array(path: Path, shape: tuple[int, int], block: int):
    """The local-label array (one chunk per block, :func:`~.merge.process_block`): reopened when an interrupted
    run left it, else created."""
    import zarr

    if path.exists():
        return zarr.open_array(path, mode="r+")
    return zarr.create_array(path, shape=shape, chunks=(block, block), dtype="uint32", fill_value=0)

