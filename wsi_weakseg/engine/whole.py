"""One in-memory path from pixels to nuclei: a model's maps, then instances, then level-0 labels.

``wsi-weakseg evaluate`` (model mode), per-epoch validation and threshold tuning all call
:func:`predict_maps` / :func:`predict_instances`, so they score exactly what ``segment`` computes:

* **Maps** come from the engine's tiled inference (:func:`~wsi_weakseg.engine.inference.predict_tiles`) with the
  card's tile size and ``context_px``, reflected about the image edges. An image no larger than one tile is one
  forward pass of the image reflected to the tile plus context, which is what ``segment`` runs on it. Tiles, not
  one whole-image pass (:func:`~wsi_weakseg.engine.inference.predict_image`): activations then stay those of one
  tile batch whatever the image size, and maps equal ``segment``'s bit for bit rather than within the card's
  context tolerance.
* **Instances** are :func:`~wsi_weakseg.engine.instances.label_image` of the maps, with the card's thresholds at
  the working pixel size (:func:`~wsi_weakseg.engine.instances.params_from_card`).
* **Level 0** (:func:`predict_level0`): working pixel ``x`` covers the level-0 interval between
  ``view.to_level0(x)`` and ``view.to_level0(x + 1)`` (:class:`~wsi_weakseg.slide.WorkingView`); each level-0
  pixel takes the label of the working pixel that covers its centre.

Everything is held in memory: the image, its maps, the labels and the Dijkstra arrays of the instance stage
(``label_image`` peaks at about 90 bytes per working pixel: tracemalloc on a 1024 x 1024 baseline map).
Regions over :data:`MAX_REGION_PIXELS` are refused with a :class:`~wsi_weakseg.errors.ConfigError` pointing at
``wsi-weakseg segment``, the streaming engine, whose outputs ``wsi-weakseg evaluate`` scores.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..errors import ConfigError
from .inference import Predictor, predict_tiles, tile_origins
from .instances import InstanceParams, label_image, params_from_card

log = logging.getLogger(__name__)

#: Most pixels (working pixels, and level-0 pixels of an evaluated window) held in memory at once: 2**26,
#: 64 Mpx (8192 x 8192), about 6 GB at the instance stage's peak.
MAX_REGION_PIXELS = 2**26

#: What to do instead with a region too large for memory (the default advice of :func:`check_region_size`).
SEGMENT_ADVICE = (
    "run `wsi-weakseg segment` on it (the streaming engine holds one block at a time; --roi restricts it to a "
    "region) and score its GeoJSON or label outputs with `wsi-weakseg evaluate PREDICTION GROUND_TRUTH`"
)


def check_region_size(shape: tuple[int, int], where: Any, what: str = "working", advice: str = SEGMENT_ADVICE) -> None:
    """Refuse a region of more than :data:`MAX_REGION_PIXELS` pixels before anything is read.

    Parameters
    ----------
    shape : (int, int)
        ``(height, width)`` in pixels.
    where : object
        Named in the message (a path).
    what : str
        Which pixels (``"working"`` or ``"level-0"``), for the message.
    advice : str
        What to do instead.

    Raises
    ------
    ConfigError
        The region is over the limit.

    Examples
    --------
    >>> check_region_size((8192, 8192), "slide.svs")
    >>> check_region_size((8192, 8193), "slide.svs")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    wsi_weakseg.errors.ConfigError: slide.svs: the 8193x8192 working px region is over the 67,108,864-pixel (64 Mpx) ...
    """
    h, w = (int(v) for v in shape)
    limit = MAX_REGION_PIXELS  # read at call time: tests lower it
    if h * w > limit:
        raise ConfigError(
            f"{where}: the {w}x{h} {what} px region is over the {limit:,}-pixel ({limit / 2**20:g} Mpx) limit of what "
            f"is held in memory at once (image, maps, labels and the instance stage's arrays); {advice}"
        )


def as_predictor(predictor_or_model: Any, device: str = "cpu") -> Predictor:
    """A :class:`~wsi_weakseg.engine.inference.Predictor` as given, or one for a loaded ``Model`` on ``device``."""
    if isinstance(predictor_or_model, Predictor):
        return predictor_or_model
    return Predictor(predictor_or_model.net, predictor_or_model.card, device)


def predict_maps(predictor: Predictor, image: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """The card's maps of an in-memory image, tiled as ``segment`` tiles it.

    Parameters
    ----------
    predictor : Predictor
        Its card gives the tile size and ``context_px``.
    image : ndarray (H, W, 3) uint8
        At the card's pixel size.
    batch_size : int
        Tiles per forward pass.

    Returns
    -------
    ndarray (K, H, W) uint8
        One map per head (probability x 255).
    """
    card = predictor.card
    shape = tuple(image.shape[:2])
    maps = np.zeros((predictor.n_maps, *shape), np.uint8)

    def read(y: int, x: int, h: int, w: int) -> np.ndarray:
        return image[y : y + h, x : x + w]

    predict_tiles(predictor, read, shape, maps, tile_origins(shape, card.tile_size), card.tile_size, card.context_px,
                  batch_size=batch_size, num_workers=1)
    return maps


def predict_instances(predictor_or_model: Any, image: np.ndarray, params: InstanceParams | None = None,
                      device: str = "cpu") -> np.ndarray:
    """Nucleus instances of an in-memory image: :func:`predict_maps`, then the engine's instance rules.

    Parameters
    ----------
    predictor_or_model : Predictor or Model
        A loaded ``Model`` is run on ``device``.
    image : ndarray (H, W, 3) uint8
        At the card's pixel size.
    params : InstanceParams, optional
        Default: the card's thresholds at the card's pixel size.
    device : str
        Only for a ``Model``.

    Returns
    -------
    ndarray (H, W) int32
        0 background, nuclei 1..n in raster order of their markers.
    """
    predictor = as_predictor(predictor_or_model, device)
    if params is None:
        params = params_from_card(predictor.card, predictor.card.mpp)
    check_region_size(image.shape[:2], "image")
    return label_image(predict_maps(predictor, image), params)


def covering_pixels(view: Any, start: int, stop: int, axis: int) -> np.ndarray:
    """Working pixel that covers the centre of each level-0 pixel ``start .. stop-1`` along ``axis``.

    Parameters
    ----------
    view : WorkingView
    start, stop : int
        Absolute level-0 pixel range.
    axis : {0, 1}
        0 for x (columns), 1 for y (rows).

    Returns
    -------
    ndarray of int64
        Working index, -1 where no working pixel covers the centre (outside the view).
    """
    n = view.shape[1 - axis]
    edges = np.asarray(view.to_level0(np.arange(n + 1), np.arange(n + 1))[axis], np.float64)
    idx = np.searchsorted(edges, np.arange(start, stop) + 0.5, side="right") - 1
    idx[(idx < 0) | (idx >= n)] = -1
    return idx.astype(np.int64)


def predict_level0(slide: Any, predictor_or_model: Any, region: Any = None, device: str = "cpu"
                   ) -> tuple[np.ndarray, tuple[int, int]]:
    """A model's instance labels on level-0 pixels: the whole bounds, or the bounding box of ``region``.

    The working window read is the region's working pixels plus ``context_px + halo`` on every side (within the
    image), its start snapped down onto the card's tile grid: the labels of the region's pixels are then those of
    a whole-slide run up to the instance stage's 1e-6 tie jitter, which :func:`label_image` hashes from
    window positions.

    Parameters
    ----------
    slide : Slide
    predictor_or_model : Predictor or Model
    region : shapely geometry, optional
        In coordinates relative to the bounds origin (QuPath's), e.g. a point file's annotated regions.
    device : str
        Only for a ``Model``.

    Returns
    -------
    labels : numpy.ndarray
        ``(h, w)`` int32 level-0 label map of the window (0 where no working pixel covers a pixel centre).
    origin : (int, int)
        Absolute level-0 ``(x, y)`` of the window's top-left pixel.

    Raises
    ------
    ConfigError
        The region is under one working pixel, or its window is over :data:`MAX_REGION_PIXELS`.
    """
    from ..slide import WorkingView

    predictor = as_predictor(predictor_or_model, device)
    card = predictor.card
    view = WorkingView(slide, card.mpp)
    params = params_from_card(card, view.mpp)
    bx, by, bw, bh = slide.bounds
    X0, Y0, X1, Y1 = bx, by, bx + bw, by + bh
    if region is not None and not region.is_empty:
        rx0, ry0, rx1, ry1 = region.bounds
        X0, Y0 = max(X0, bx + math.floor(rx0)), max(Y0, by + math.floor(ry0))
        X1, Y1 = min(X1, bx + math.ceil(rx1)), min(Y1, by + math.ceil(ry1))
    cols, rows = covering_pixels(view, X0, X1, 0), covering_pixels(view, Y0, Y1, 1)
    cv, rv = cols >= 0, rows >= 0
    if not cv.any() or not rv.any():
        raise ConfigError(f"{slide.path}: the region to evaluate is smaller than one pixel at {card.mpp} µm/px")
    check_region_size((Y1 - Y0, X1 - X0), slide.path, "level-0")
    H, W = view.shape
    margin, tile = card.context_px + params.halo, card.tile_size
    ca, cb = max(int(cols[cv].min()) - margin, 0) // tile * tile, min(int(cols[cv].max()) + 1 + margin, W)
    ra, rb = max(int(rows[rv].min()) - margin, 0) // tile * tile, min(int(rows[rv].max()) + 1 + margin, H)
    check_region_size((rb - ra, cb - ca), slide.path)
    working = label_image(predict_maps(predictor, view.read(ra, ca, rb - ra, cb - ca)), params, (ra, ca), W)
    out = np.zeros((Y1 - Y0, X1 - X0), np.int32)
    out[np.ix_(rv, cv)] = working[np.ix_(rows[rv] - ra, cols[cv] - ca)]
    log.debug("%s: %d objects on a %dx%d level-0 window at (%d, %d)", slide.path.name, int(working.max()),
              X1 - X0, Y1 - Y0, X0, Y0)
    return out, (X0, Y0)
