"""The engine's second model type, ``detect-segment``: nuclei a network detects and segments itself.

A detect-and-segment network (:class:`~wsi_weakseg.model.lacss.LacssNet`) gives detections on grids and, for
each detection, mask logits in a square window around it. The engine keeps its one path (tiles -> maps -> blocks
-> records -> outputs) by turning those outputs, tile by tile, into dense per-pixel maps from which the merge
blocks read instances with the same exactly-once rules as for any model:

1. **Detections** (in the tile, :func:`detect`): every grid cell of probability >= the card's ``centre``
   threshold is a candidate at ``stride * (cell + 0.5 + offset)``; a candidate is kept when it is the best
   (probability, then earlier raster position of its pixel, then finer stride) within ``peak_radius`` of it. That
   is a local rule, unlike greedy non-maximum suppression, whose chains of suppression reach arbitrarily far.
   Its *anchor* is the pixel holding its location.
2. **Masks** (:func:`rasterise`): each kept detection's window (aligned to the stride-4 grid,
   :func:`~wsi_weakseg.model.lacss.window_origin`) is segmented; a pixel belongs to the detection of highest
   logit among the windows covering it (ties: earlier anchor), except that an anchor pixel always belongs to its
   own detection. The tile writes, per core pixel, that owner's probability (``foreground``), the finest
   detection grid's probability (``centre``) and the offset to the owner's anchor (``anchor_dy``,
   ``anchor_dx``, +128). A tile needs the detections anchored within :attr:`AnchoredParams.reach` of its core,
   which are decided within ``peak_radius`` of them: the card's ``context_px`` covers ``reach + peak_radius``
   plus the detection map's own measured context.
3. **Instances** (:func:`label_anchored`, in each merge block): foreground pixels take their anchor's label;
   then the usual clean-up (:func:`~.instances.clean_labels`: marker component, minimum area, pockets, saddles).
   Every pixel of a nucleus lies within ``reach`` of its anchor, so the merge halo
   (:attr:`~.instances.InstanceParams.halo`) follows from the window, and a nucleus is owned by the block
   whose core holds its anchor, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..model.lacss import (
    SEG_STRIDE,
    LacssOutput,
    window_cells,
    window_origin,
    window_reach,
)
from .instances import InstanceParams, clean_labels

#: Offsets to the anchor are stored as uint8 with this bias (the card limits the window to 240 px: reach <= 123).
OFFSET_BIAS = 128
#: Map channels of a detect-segment model: the two probability maps written to the OME-Zarr, then the offsets.
CHANNELS = ("foreground", "centre", "anchor_dy", "anchor_dx")


@dataclass(frozen=True)
class AnchoredParams(InstanceParams):
    """:class:`~.instances.InstanceParams` of a detect-segment model (``max_cost`` = the window's reach).

    Attributes
    ----------
    window : int
        Mask window side (working pixels, multiple of 8).
    """

    window: int = 48


def anchored_params(card, mpp: float) -> AnchoredParams:
    """A detect-segment card's thresholds in working pixels and map levels at ``mpp`` µm/px."""
    t, window = card.thresholds, card.window_px(mpp)
    return AnchoredParams(
        foreground=math.ceil(t["foreground"] * 255),
        centre=max(1, math.ceil(t["centre"] * 255)),
        peak_radius=max(1, round(t["peak_radius_um"] / mpp)),
        max_cost=float(window_reach(window)),
        path_weight=0.0,
        min_area=max(1, round(t["min_area_um2"] / mpp**2)),
        window=window,
    )


@dataclass(frozen=True)
class Detections:
    """Kept detections of one image: anchor pixels (raster order), probabilities, and their batch index."""

    anchors: np.ndarray  # (n, 2) int64, (row, col) in the input
    scores: np.ndarray  # (n,) float64


def detect(out: LacssOutput, strides: tuple[int, ...], index: int, threshold: float, radius: float,
           shape: tuple[int, int]) -> Detections:
    """The kept detections of batch item ``index`` (rule 1 of the module docstring).

    Candidates whose location falls outside the input (``shape``, its offset pointing beyond the edge) are
    dropped first: they lie farther than the context from any core pixel.
    """
    locs, scores, order = [], [], []
    for k, (stride, det) in enumerate(zip(strides, out.detections)):
        d = det[index].detach().float().cpu().numpy().astype(np.float64)
        prob = 1.0 / (1.0 + np.exp(-d[0]))
        rows, cols = np.nonzero(prob >= threshold)
        off = np.clip(d[1:, rows, cols], -1.0, 1.0)
        locs.append(np.stack([stride * (rows + 0.5 + off[0]), stride * (cols + 0.5 + off[1])], axis=1))
        scores.append(prob[rows, cols])
        order.append(np.full(rows.size, k))
    loc, score, level = np.concatenate(locs), np.concatenate(scores), np.concatenate(order)
    anchors = np.floor(loc).astype(np.int64)
    inside = (anchors[:, 0] >= 0) & (anchors[:, 0] < shape[0]) & (anchors[:, 1] >= 0) & (anchors[:, 1] < shape[1])
    loc, score, level, anchors = loc[inside], score[inside], level[inside], anchors[inside]
    if loc.size == 0:
        return Detections(np.zeros((0, 2), np.int64), np.zeros(0))
    width = int(anchors[:, 1].max()) + 1 - int(anchors[:, 1].min())
    raster = (anchors[:, 0] - anchors[:, 0].min()) * width + anchors[:, 1] - anchors[:, 1].min()
    rank = np.lexsort((level, raster, -score))  # best first: probability, earlier pixel, finer stride
    better = np.empty(rank.size, np.int64)
    better[rank] = np.arange(rank.size)
    pairs = cKDTree(loc).query_pairs(radius, output_type="ndarray")
    beaten = np.zeros(loc.shape[0], bool)
    if pairs.size:
        i, j = pairs[:, 0], pairs[:, 1]
        beaten[np.where(better[i] > better[j], i, j)] = True
    keep = np.flatnonzero(~beaten)
    keep = keep[np.lexsort((anchors[keep, 1], anchors[keep, 0]))]
    return Detections(anchors[keep], score[keep])


def rasterise(logits: np.ndarray, anchors: np.ndarray, window: int, core: tuple[int, int, int, int]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Best logit and owner (index into ``anchors``, -1 for none) of each pixel of ``core`` (rule 2).

    Parameters
    ----------
    logits : ndarray (n, window, window)
        Mask logits of the detections, in raster order of their anchors.
    anchors : ndarray (n, 2)
    window : int
    core : (y0, x0, y1, x1)
        The pixels to fill, in the frame of ``anchors``.
    """
    y0, x0, y1, x1 = core
    best = np.full((y1 - y0, x1 - x0), -np.inf, np.float32)
    owner = np.full(best.shape, -1, np.int64)
    origins = window_origin(anchors, window)
    for i, (oy, ox) in enumerate(origins.tolist()):
        ya, yb, xa, xb = max(oy, y0), min(oy + window, y1), max(ox, x0), min(ox + window, x1)
        if ya >= yb or xa >= xb:
            continue
        patch = logits[i, ya - oy : yb - oy, xa - ox : xb - ox]
        view_best, view_owner = best[ya - y0 : yb - y0, xa - x0 : xb - x0], owner[ya - y0 : yb - y0, xa - x0 : xb - x0]
        wins = patch > view_best  # strict: an earlier anchor keeps a tie
        view_best[wins] = patch[wins]
        view_owner[wins] = i
    inside = (anchors[:, 0] >= y0) & (anchors[:, 0] < y1) & (anchors[:, 1] >= x0) & (anchors[:, 1] < x1)
    for i in np.flatnonzero(inside):  # an anchor pixel is its own detection's
        ay, ax = anchors[i]
        best[ay - y0, ax - x0] = logits[i, ay - origins[i, 0], ax - origins[i, 1]]
        owner[ay - y0, ax - x0] = i
    return best, owner


class AnchoredDecoder:
    """Network outputs on a tile batch -> the four uint8 maps of :data:`CHANNELS` for the tiles' cores.

    Parameters
    ----------
    card : ModelCard
        A ``detect-segment`` card (thresholds, window, mpp).
    """

    n_maps = len(CHANNELS)

    def __init__(self, card) -> None:
        t = card.thresholds
        self.threshold, self.radius = float(t["centre"]), float(t["peak_radius_um"]) / card.mpp
        self.window = card.window_px()
        self.reach = window_reach(self.window)

    def __call__(self, net, forward: Callable[[torch.Tensor], LacssOutput], x: torch.Tensor, crop: int) -> np.ndarray:
        """(N, 3, h, w) normalised input -> (N, 4, h - 2 crop, w - 2 crop) uint8."""
        out = forward(x)
        h, w = x.shape[2], x.shape[3]
        core = (crop, crop, h - crop, w - crop)
        found = [self._near_core(detect(out, net.det_strides, i, self.threshold, self.radius, (h, w)), core) for i in range(x.shape[0])]
        cells = torch.from_numpy(np.concatenate(
            [np.concatenate([np.full((len(d.anchors), 1), i), d.anchors // SEG_STRIDE], axis=1) for i, d in enumerate(found)]
        ).astype(np.int64)).to(x.device)
        logits = net.segment(out.features.float(), cells, window_cells(self.window)).float().cpu().numpy()
        centre = torch.sigmoid(out.detections[0][:, 0].float()).cpu().numpy()
        stride = net.det_strides[0]
        maps, start = [], 0
        for i, d in enumerate(found):
            mine = logits[start : start + len(d.anchors)]
            start += len(d.anchors)
            maps.append(self._maps(mine, d.anchors, core, centre[i], stride))
        return np.stack(maps)

    def _near_core(self, d: Detections, core: tuple[int, int, int, int]) -> Detections:
        """The detections whose window can reach a pixel of ``core`` (anchor within ``reach`` of it)."""
        y0, x0, y1, x1 = core
        a, r = d.anchors, self.reach
        near = (a[:, 0] >= y0 - r) & (a[:, 0] < y1 + r) & (a[:, 1] >= x0 - r) & (a[:, 1] < x1 + r)
        return Detections(a[near], d.scores[near])

    def _maps(self, logits: np.ndarray, anchors: np.ndarray, core: tuple[int, int, int, int], centre: np.ndarray,
              stride: int) -> np.ndarray:
        y0, x0, y1, x1 = core
        best, owner = rasterise(logits, anchors, self.window, core)
        out = np.zeros((4, y1 - y0, x1 - x0), np.uint8)
        has = owner >= 0
        out[0][has] = np.rint(255.0 / (1.0 + np.exp(-best[has].astype(np.float64)))).astype(np.uint8)
        rows, cols = np.arange(y0, y1) // stride, np.arange(x0, x1) // stride
        out[1] = np.rint(centre[np.ix_(rows, cols)] * 255.0).astype(np.uint8)
        yy, xx = np.nonzero(has)
        own = anchors[owner[has]]
        out[2] = out[3] = OFFSET_BIAS
        out[2][yy, xx] = own[:, 0] - (yy + y0) + OFFSET_BIAS
        out[3][yy, xx] = own[:, 1] - (xx + x0) + OFFSET_BIAS
        return out


def label_anchored(win: np.ndarray, params: AnchoredParams, origin: tuple[int, int] = (0, 0)
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances of a window of detect-segment maps (rule 3): ``(labels, markers, oversized flags)``.

    Parameters
    ----------
    win : ndarray (4, h, w) uint8
        The maps of :data:`CHANNELS` over the window.
    params : AnchoredParams
    origin : (int, int)
        The window's first pixel in the image (the mask windows lie on the image's stride-4 grid).

    Returns
    -------
    labels : ndarray (h, w) int32
        1-based index into ``markers``, cleaned (:func:`~.instances.clean_labels`).
    markers : ndarray (n, 2) int64
        Anchors in the window, raster order; a foreground pixel whose anchor lies outside the window is left 0.
    flags : ndarray (n + 1,) bool
        Index ``i``: nucleus ``i`` reaches the edge of its mask window (cut there: "oversized").
    """
    h, w = win.shape[1:]
    rows, cols = np.nonzero(win[0] >= params.foreground)
    ay = rows + win[2, rows, cols].astype(np.int64) - OFFSET_BIAS
    ax = cols + win[3, rows, cols].astype(np.int64) - OFFSET_BIAS
    inside = (ay >= 0) & (ay < h) & (ax >= 0) & (ax < w)
    keys, inverse = np.unique(ay[inside] * w + ax[inside], return_inverse=True)
    markers = np.stack([keys // w, keys % w], axis=1).astype(np.int64)
    labels = np.zeros((h, w), np.int32)
    labels[rows[inside], cols[inside]] = inverse.reshape(-1) + 1
    labels, markers = _own_anchors(labels, markers)
    labels = clean_labels(labels, markers, params)
    return labels, markers, _at_window_edge(labels, markers, params.window, origin)


def _own_anchors(labels: np.ndarray, markers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the nuclei whose anchor pixel is not their own (0 there, or another nucleus's).

    In one tile an anchor pixel always belongs to its detection (rule 2), but its pixels and the anchor pixel
    can be written by different tiles, whose detections agree only within the context tolerance. A nucleus
    whose anchor another tile gave away is dropped: the rule reads one pixel of the window, so it stays local,
    and every marker the clean-up floods from then lies in its own nucleus.
    """
    if len(markers) == 0:
        return labels, markers
    own = labels[markers[:, 0], markers[:, 1]] == np.arange(1, len(markers) + 1)
    if own.all():
        return labels, markers
    new = np.zeros(len(markers) + 1, np.int32)
    new[1:][own] = np.arange(1, int(own.sum()) + 1, dtype=np.int32)
    return new[labels], markers[own]


def _at_window_edge(labels: np.ndarray, markers: np.ndarray, window: int, origin: tuple[int, int]) -> np.ndarray:
    """Per marker (index 0 unused): some pixel of its nucleus lies on the first or last row/column of its window."""
    flags = np.zeros(len(markers) + 1, bool)
    rows, cols = np.nonzero(labels)
    if rows.size == 0:
        return flags
    lab = labels[rows, cols]
    start = window_origin(markers + np.asarray(origin), window) - np.asarray(origin)  # window-local first pixel
    sy, sx = start[lab - 1, 0], start[lab - 1, 1]
    edge = (rows == sy) | (rows == sy + window - 1) | (cols == sx) | (cols == sx + window - 1)
    flags[np.unique(lab[edge])] = True
    return flags


class AnchoredMaps:
    """The four maps of a ``segment`` run of a detect-segment model, as one ``(4, H, W)`` array-like.

    The probability channels are the OME-Zarr image's (what every model writes); the anchor offsets live in a
    working zarr array of the run's folder (``offsets``, ``(2, H, W)``, reopened on resume). Tiles write all four
    (``out[:, rows, cols] = maps``) and blocks read all four (``maps[:, rows, cols]``), so :mod:`.inference` and
    :mod:`.merge` see one array.
    """

    def __init__(self, image, offsets) -> None:
        self.image, self.offsets = image, offsets
        self.shape = (len(CHANNELS), *image.shape[1:])

    @classmethod
    def create(cls, image, path, tile: int) -> AnchoredMaps:
        """Around ``image`` (2, H, W), with the offsets at ``path`` (reopened when an interrupted run left it)."""
        import zarr

        if path.exists():
            return cls(image, zarr.open_array(path, mode="r+"))
        offsets = zarr.create_array(path, shape=(2, *image.shape[1:]), chunks=(2, tile, tile), dtype="uint8",
                                    fill_value=OFFSET_BIAS)
        return cls(image, offsets)

    def __setitem__(self, key, value: np.ndarray) -> None:
        _, rows, cols = key
        self.image[:, rows, cols] = value[:2]
        self.offsets[:, rows, cols] = value[2:]

    def __getitem__(self, key) -> np.ndarray:
        _, rows, cols = key
        return np.concatenate([np.asarray(self.image[:, rows, cols]), np.asarray(self.offsets[:, rows, cols])])
