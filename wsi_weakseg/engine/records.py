"""A block's owned nuclei as flat arrays, and the streams that read them back in global raster order.

A block hands its nuclei to the driver through a small file of arrays (:class:`BlockNuclei`), not one
object per nucleus: a 40x slide has millions of nuclei, and per-nucleus objects, their pickling and their
formatting were most of the post-processing time (issue 13). Rings of all nuclei lie in one ``(m, 2)``
array in the layout of ``shapely.from_ragged_array`` (ring offsets, polygon offsets), which the validity
check and the formatter take as they are. :class:`Nucleus` remains the per-nucleus view for callers that
want one (tests, analysis); :func:`iter_texts` is what the GeoJSON writer streams.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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


@dataclass
class BlockNuclei:
    """The nuclei one block owns, in key order, as arrays.

    Attributes
    ----------
    keys : ndarray of int64, shape (n,)
        Anchor raster keys ``row * width + col + 1`` (global), ascending.
    anchors : ndarray of int64, shape (n, 2)
        Anchor (row, col), global working pixels.
    area_px, mean_foreground, centre_score, oversized : ndarray, shape (n,)
    xy : ndarray of float64, shape (m, 2)
        Every ring's closed ``(x, y)`` corners (first vertex repeated), global working frame; nucleus
        ``i``'s rings are ``ring_starts[poly_starts[i]:poly_starts[i + 1] + 1]`` (exterior first).
    ring_starts : ndarray of int64, shape (r + 1,)
    poly_starts : ndarray of int64, shape (n + 1,)
    text : str
        Serialised features without their ids: nucleus ``i`` is ``text[cuts[i, 0]:cuts[i, 1]] + str(id) +
        text[cuts[i, 1]:cuts[i, 2]]``; empty when the block was not formatted.
    cuts : ndarray of int64, shape (n, 3)
    """

    keys: np.ndarray
    anchors: np.ndarray
    area_px: np.ndarray
    mean_foreground: np.ndarray
    centre_score: np.ndarray
    oversized: np.ndarray
    xy: np.ndarray
    ring_starts: np.ndarray
    poly_starts: np.ndarray
    text: str = ""
    cuts: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))

    def __len__(self) -> int:
        return int(self.keys.size)

    @classmethod
    def empty(cls) -> BlockNuclei:
        z = np.zeros(0, np.int64)
        return cls(z, np.zeros((0, 2), np.int64), z, np.zeros(0), np.zeros(0), np.zeros(0, bool),
                   np.zeros((0, 2)), np.zeros(1, np.int64), np.zeros(1, np.int64))

    @classmethod
    def from_nuclei(cls, nuclei: list[Nucleus]) -> BlockNuclei:
        """Arrays of a list of :class:`Nucleus` (their order kept)."""
        if not nuclei:
            return cls.empty()
        rings = [r for n in nuclei for r in n.rings]
        return cls(
            keys=np.array([n.key for n in nuclei], np.int64),
            anchors=np.array([n.anchor for n in nuclei], np.int64).reshape(-1, 2),
            area_px=np.array([n.area_px for n in nuclei], np.int64),
            mean_foreground=np.array([n.mean_foreground for n in nuclei], np.float64),
            centre_score=np.array([n.centre_score for n in nuclei], np.float64),
            oversized=np.array([n.oversized for n in nuclei], bool),
            xy=np.concatenate(rings).astype(np.float64),
            ring_starts=np.concatenate([[0], np.cumsum([len(r) for r in rings])]).astype(np.int64),
            poly_starts=np.concatenate([[0], np.cumsum([len(n.rings) for n in nuclei])]).astype(np.int64),
        )

    def rings(self, i: int) -> list[np.ndarray]:
        """Closed rings of nucleus ``i`` (views into :attr:`xy`)."""
        rs = self.ring_starts[self.poly_starts[i] : self.poly_starts[i + 1] + 1]
        return [self.xy[a:b] for a, b in zip(rs[:-1].tolist(), rs[1:].tolist())]

    def texts(self, i: int) -> tuple[str, str] | None:
        """``(head, tail)`` of nucleus ``i``, or None when the block was not formatted."""
        if not self.text:
            return None
        a, b, c = self.cuts[i].tolist()
        return self.text[a:b], self.text[b:c]

    def nucleus(self, i: int) -> Nucleus:
        """Nucleus ``i`` as a :class:`Nucleus`."""
        return Nucleus(
            key=int(self.keys[i]), anchor=(int(self.anchors[i, 0]), int(self.anchors[i, 1])), rings=self.rings(i),
            area_px=int(self.area_px[i]), mean_foreground=float(self.mean_foreground[i]),
            centre_score=float(self.centre_score[i]), oversized=bool(self.oversized[i]), text=self.texts(i),
        )


_ARRAYS = ("keys", "anchors", "area_px", "mean_foreground", "centre_score", "oversized", "xy", "ring_starts",
           "poly_starts", "cuts")


def record_path(record_dir: Path, index: tuple[int, int]) -> Path:
    """The record file of block ``index``: ``{by}_{bx}.npz``."""
    return record_dir / f"{index[0]}_{index[1]}.npz"


def save_block(record_dir: Path, index: tuple[int, int], nuclei: BlockNuclei, n_repaired: int = 0,
               core_keys: np.ndarray | None = None) -> None:
    """Write a block's record: plain arrays (``.npz``, no pickle), by temporary name and rename.

    A record exists only complete, so a resumed run (:mod:`.resume`) can trust any record it finds.
    ``core_keys`` is the table from the block's local labels (its key chunk) to anchor keys, 0 first.
    """
    path = record_path(record_dir, index)
    tmp = path.with_name(path.name + ".tmp")
    arrays = {k: getattr(nuclei, k) for k in _ARRAYS}
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays, text=np.frombuffer(nuclei.text.encode("utf-8"), np.uint8),
                 n_repaired=np.int64(n_repaired),
                 core_keys=np.zeros(1, np.int64) if core_keys is None else np.asarray(core_keys, np.int64))
    os.replace(tmp, path)


def load_block(record_dir: Path, index: tuple[int, int]) -> BlockNuclei:
    """Read a block's record (arrays only: ``allow_pickle=False``)."""
    with np.load(record_path(record_dir, index), allow_pickle=False) as z:
        return BlockNuclei(**{k: z[k] for k in _ARRAYS}, text=z["text"].tobytes().decode("utf-8"))


def load_core_keys(record_dir: Path, index: tuple[int, int]) -> np.ndarray:
    """The block's table from local label to anchor key (``core_keys`` of :func:`save_block`)."""
    with np.load(record_path(record_dir, index), allow_pickle=False) as z:
        return z["core_keys"]


def load_summary(record_dir: Path, index: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """A finished block's anchor keys, number of oversized and of repaired nuclei (for a resumed run)."""
    with np.load(record_path(record_dir, index), allow_pickle=False) as z:
        return z["keys"], int(z["oversized"].sum()), int(z["n_repaired"])


def _rows(record_dir: Path, blocks: list[tuple[int, int]]) -> Iterator[tuple[list[BlockNuclei], np.ndarray]]:
    """Per block row: its records and the order (block, nucleus) pairs take in global raster order."""
    rows: dict[int, list[tuple[int, int]]] = {}
    for by, bx in blocks:
        rows.setdefault(by, []).append((by, bx))
    for by in sorted(rows):
        records = [load_block(record_dir, b) for b in sorted(rows[by])]
        which = np.concatenate([np.full(len(r), k, np.int64) for k, r in enumerate(records)] or [np.zeros(0, np.int64)])
        local = np.concatenate([np.arange(len(r)) for r in records] or [np.zeros(0, np.int64)])
        keys = np.concatenate([r.keys for r in records] or [np.zeros(0, np.int64)])
        order = np.argsort(keys, kind="stable")
        yield records, np.stack([which[order], local[order]], axis=1)


def iter_nuclei(record_dir: Path, blocks: list[tuple[int, int]]) -> Iterator[Nucleus]:
    """All owned nuclei in global raster order of their anchors, one block row in memory at a time."""
    for records, order in _rows(record_dir, blocks):
        for k, i in order.tolist():
            yield records[k].nucleus(i)


def iter_texts(record_dir: Path, blocks: list[tuple[int, int]]) -> Iterator[tuple[str, str]]:
    """``(head, tail)`` of every owned nucleus in global raster order (formatted blocks only)."""
    for records, order in _rows(record_dir, blocks):
        for k, i in order.tolist():
            r = records[k]
            a, b, c = r.cuts[i].tolist()
            yield r.text[a:b], r.text[b:c]
