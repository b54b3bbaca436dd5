"""Nuclei to QuPath detection features, serialised where they are computed (in the block workers).

Serialising in the workers keeps the final GeoJSON pass to string concatenation. Only the id is unknown
there (it is the anchor's global rank, known after all blocks finish), so a feature is stored as the text
before and after its ``Label`` value.

A block's nuclei are formatted together (:meth:`DetectionFormat.format_block`): coordinates of all rings
are transformed and rounded in one numpy pass and written as text by a compiled kernel
(:mod:`~wsi_weakseg.io._jsontext`), measurements too (rounded to 4 decimals as ``rint(x * 1e4) / 1e4``). The text is byte-identical to
``serialize_feature(nucleus_feature(...))``, the general path, which is also the fallback for any nucleus
the fast path cannot prove identical (``tests/engine/test_features.py`` compares the two).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..io._jsontext import MAX_ABS, members_text, polygons_text
from ..io.geojson import nucleus_feature, serialize_feature, stable_uuid, stable_uuids
from .records import BlockNuclei

_LABEL = '"measurements":{"Label":'
_MEASUREMENTS = ("Nucleus: Area µm^2", "Nucleus: Perimeter µm", "Nucleus: Mean probability", "Nucleus: Centre score")


@dataclass(frozen=True)
class DetectionFormat:
    """How nuclei become features: output frame, units, class, and what makes ids stable.

    Attributes
    ----------
    fingerprint, model_sha : str
        Slide content fingerprint and model sha256: with the anchor they make the feature UUID.
    scale : float
        Level-0 pixels per working pixel.
    offset : (float, float)
        Output-frame (x, y) of working pixel (0, 0)'s top-left corner.
    mpp : float
        Working µm/px (for areas and perimeters).
    class_name : str
    color : (int, int, int)
    regions : RegionClasses, optional
        ``--regions``: one more measurement per class, ``Region: <class>`` = 1 when the nucleus's centroid lies
        inside the class's area, else 0 (:mod:`.nuclei_regions`).
    """

    fingerprint: str
    model_sha: str
    scale: float
    offset: tuple[float, float]
    mpp: float
    class_name: str
    color: tuple[int, int, int]
    regions: Any = field(default=None, compare=False)

    def __call__(self, nucleus) -> tuple[str, str]:
        """``(head, tail)`` such that ``head + str(id) + tail`` is the serialised feature."""
        return self.format_block(BlockNuclei.from_nuclei([nucleus])).texts(0)

    def reference(self, nucleus) -> tuple[str, str]:
        """The same text by the general path (``nucleus_feature`` + ``serialize_feature``)."""
        rings = [r * self.scale + np.asarray(self.offset) for r in nucleus.rings]
        ay, ax = nucleus.anchor
        values = self._values(np.array([nucleus.area_px]), np.array([_perimeter(nucleus)]),
                              np.array([nucleus.mean_foreground]), np.array([nucleus.centre_score]),
                              self._in_regions(*_ragged(nucleus.rings)))[0]
        feature = nucleus_feature(
            stable_uuid(self.fingerprint, self.model_sha, ax, ay),
            rings[0],
            holes=rings[1:],
            class_name=self.class_name,
            color=self.color,
            measurements=dict(zip(("Label", *self._names), (0, *values.tolist()))),
        )
        head, sep, tail = serialize_feature(feature).partition(_LABEL + "0")
        assert sep, "Label placeholder missing"
        return head + _LABEL, tail

    def format_block(self, block: BlockNuclei) -> BlockNuclei:
        """``block`` with ``text`` and ``cuts`` set: every nucleus as :meth:`reference` writes it."""
        n = len(block)
        if n == 0:
            return block
        xy, ring_starts, poly_starts = block.xy, block.ring_starts, block.poly_starts
        v = np.round(xy * self.scale + np.asarray(self.offset), 2) + 0.0  # as nucleus_feature rounds
        c = np.rint(v * 100.0)
        exact = np.all(np.isfinite(v) & (np.abs(v) < MAX_ABS) & (c / 100.0 == v), axis=1)
        buf, offsets, ok = polygons_text(c.astype(np.int64), ring_starts, poly_starts)
        geometry = buf.tobytes().decode("ascii")
        good = ok & np.logical_and.reduceat(_ring_all(exact, ring_starts), poly_starts[:-1])
        perimeters = _perimeters(xy, ring_starts, poly_starts)
        values = self._values(block.area_px, perimeters, block.mean_foreground, block.centre_score,
                              self._in_regions(xy, ring_starts, poly_starts))
        good &= np.isfinite(perimeters) & np.all(np.isfinite(values) & (np.abs(values) < MAX_ABS), axis=1)
        tails = self._tails(np.where(good[:, None], values, 0.0))
        uuids = stable_uuids((self.fingerprint, self.model_sha), block.anchors[:, ::-1])
        parts: list[str] = []
        for i in range(n):
            if good[i]:
                parts.append(f'{{"type":"Feature","id":"{uuids[i]}","geometry":{{"type":"Polygon","coordinates":'
                             f'{geometry[offsets[i]:offsets[i + 1]]}}},{self._properties}{_LABEL}')
                parts.append(tails[i])
            else:  # raises the general path's error, or formats the odd case
                parts.extend(self.reference(block.nucleus(i)))
        ends = np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts))).reshape(n, 2)
        block.text = "".join(parts)
        block.cuts = np.column_stack([np.concatenate([[0], ends[:-1, 1]]), ends]).astype(np.int64)
        return block

    def _values(self, area_px, perimeter, mean_foreground, centre_score, in_regions) -> np.ndarray:
        """The measurements (n, 4 + region classes), each rounded to 4 decimals as ``rint(x * 1e4) / 1e4`` (the
        written value)."""
        raw = np.column_stack([np.asarray(area_px, np.float64) * self.mpp**2, np.asarray(perimeter) * self.mpp,
                               np.asarray(mean_foreground, np.float64), np.asarray(centre_score, np.float64),
                               in_regions.astype(np.float64)])
        return np.rint(raw * 1e4) / 1e4 + 0.0

    def _in_regions(self, xy: np.ndarray, ring_starts: np.ndarray, poly_starts: np.ndarray) -> np.ndarray:
        """(n, region classes) membership of each nucleus (no columns without ``regions``)."""
        if self.regions is None:
            return np.zeros((len(poly_starts) - 1, 0), bool)
        return self.regions.of_polygons(xy, ring_starts, poly_starts, self.scale, self.offset)

    def _tails(self, values: np.ndarray) -> list[str]:
        """``,"key":value`` x 4 + ``}}}`` of each row, as ``serialize_feature`` writes the rounded values."""
        keys = "".join(self._keys)
        data = keys.encode("utf-8")
        starts = np.cumsum([0] + [len(k.encode("utf-8")) for k in self._keys]).astype(np.int64)
        buf, offsets = members_text(np.rint(values * 1e4).astype(np.int64), np.frombuffer(data, np.uint8), starts, 4,
                                    np.frombuffer(b"}}}", np.uint8))
        text = buf.tobytes().decode("utf-8")
        chars = offsets - (len(data) - len(keys)) * np.arange(len(offsets))  # multi-byte characters (µ) per row
        return [text[a:b] for a, b in zip(chars[:-1].tolist(), chars[1:].tolist())]

    @cached_property
    def _properties(self) -> str:
        """Text from ``"properties"`` up to the measurements, as ``serialize_feature`` writes it."""
        cls = {"name": self.class_name, "color": [int(c) for c in self.color]}
        return '"properties":{"objectType":"detection","classification":' + _dumps(cls) + ","

    @cached_property
    def _names(self) -> tuple[str, ...]:
        """Measurement names after ``Label``."""
        return _MEASUREMENTS + (() if self.regions is None else self.regions.measurement_names)

    @cached_property
    def _keys(self) -> tuple[str, ...]:
        return tuple(_dumps(k) for k in self._names)


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _ragged(rings: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One nucleus's closed rings in ``shapely.from_ragged_array`` layout."""
    sizes = [len(r) for r in rings]
    return np.concatenate(rings).astype(np.float64), np.cumsum([0, *sizes]), np.array([0, len(rings)])


def _perimeter(nucleus) -> float:
    """Exterior length in working pixels (of the outline as written: pixel edges or smooth)."""
    ring = np.asarray(nucleus.rings[0], np.float64)
    return float(_perimeters(ring, np.array([0, len(ring)]), np.array([0, 1]))[0])


def _ring_all(flags: np.ndarray, ring_starts: np.ndarray) -> np.ndarray:
    """Per ring: all its vertices flagged."""
    return np.logical_and.reduceat(flags, ring_starts[:-1])


def _perimeters(xy: np.ndarray, ring_starts: np.ndarray, poly_starts: np.ndarray) -> np.ndarray:
    """Exterior length of every polygon, in one pass: exact sums of |dx| + |dy| for rings of axis-aligned
    edges on integer corners (every pixel outline), else the sum of the edges' Euclidean lengths (smooth
    and repaired outlines), added edge by edge in ring order (``np.add.reduceat``), as :func:`_perimeter`."""
    ext = ring_starts[poly_starts[:-1]]
    ends = ring_starts[poly_starts[:-1] + 1]
    d = np.abs(np.diff(xy, axis=0))
    step = d[:, 0] + d[:, 1]
    step = np.append(step, 0.0)
    step[ring_starts[1:] - 1] = 0.0  # no step from a ring's last vertex into the next ring
    csum = np.concatenate([[0.0], np.cumsum(step)])
    out = csum[ends - 1] - csum[ext]
    on_grid = np.all(xy == np.floor(xy), axis=1)
    integral = np.logical_and.reduceat(on_grid, ring_starts[:-1])[poly_starts[:-1]]
    axis_aligned = np.minimum(d[:, 0], d[:, 1])
    axis_aligned = np.append(axis_aligned, 0.0)
    axis_aligned[ring_starts[1:] - 1] = 0.0
    bent = np.concatenate([[0.0], np.cumsum(axis_aligned)])
    straight = (bent[ends - 1] - bent[ext]) == 0
    other = np.flatnonzero(~(integral & straight & (np.abs(out) < 2**52)))
    if other.size:
        length = np.append(np.hypot(d[:, 0], d[:, 1]), 0.0)
        length[ring_starts[1:] - 1] = 0.0
        # sums of each exterior's edges; an exterior's closing vertex contributes the 0.0 set above
        out[other] = _sequential_sums(length, ext[other], ends[other])
    return out


def _sequential_sums(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``values[a:b]`` summed left to right for each pair, vectorised over the pairs (the same floats for a
    range wherever it lies, unlike a pairwise ``sum``); every range is non-empty."""
    n = ends - starts
    out = values[starts].copy()
    for k in range(1, int(n.max()) if n.size else 0):
        more = n > k
        out[more] += values[starts[more] + k]
    return out
