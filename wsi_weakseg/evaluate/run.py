"""``wsi-weakseg evaluate`` as a library: score predictions against ground truth, per image and on average.

Predictions are instance label maps (PNG/TIFF/``.npy``), GeoJSON detections (as ``wsi-weakseg segment``
writes them, or any QuPath export of polygons or points), or a model run in memory on a data spec's split.
Ground truth is an instance label map (every metric) or a QuPath point export (detection metrics only; the
mask metrics are ``None``, never 0).

Everything is scored on the ground truth's pixel grid:

* GeoJSON polygons are rasterised at pixel centres (QuPath convention: pixel ``(col i, row j)`` spans
  ``[i, i+1) x [j, j+1)``, so it belongs to a polygon when ``(i + 0.5, j + 0.5)`` lies strictly inside it;
  holes respected). Object ids follow feature order; where polygons overlap, the later one wins.
* A model's labels, computed at the model's pixel size exactly as ``segment`` computes them, are brought to
  level 0 by nearest neighbour (:func:`~wsi_weakseg.engine.whole.predict_level0`): working pixel ``x`` covers
  level-0 ``[view.to_level0(x), view.to_level0(x + 1))``. Rasterising ``segment``'s GeoJSON therefore gives the
  same label map.
* Against points, predicted objects count by their centroids, and only inside the annotated regions of the
  point file (a nucleus found where nobody clicked is not a false positive).

The detection radius is given in µm and converted with the ground truth's pixel size (its metadata, else the
``mpp`` argument; :class:`~wsi_weakseg.errors.MissingMppError` when there is neither), or given directly in
ground-truth pixels. The default, 3 µm, is the literature's 6 px at 20x (0.5 µm/px).

Means are per-image means (as MoNuSeg reports AJI): mask metrics over the images that have label maps,
detection metrics over all images. ``pooled`` adds detection counts summed over images and the precision,
recall and F1 of the sums.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_weakseg.errors import ConfigError, MissingMppError

from ._inputs import (
    FOLDER_SUFFIXES,
    Objects,
    file_kind,
    pair_files,
    rasterize_polygons,
    read_label_map,
    read_prediction,
    read_truth,
)
from .detection import detection_scores
from .metrics import evaluate_instances

__all__ = [
    "DEFAULT_RADIUS_UM",
    "DETECTION_METRICS",
    "FOLDER_SUFFIXES",
    "MASK_METRICS",
    "evaluate_files",
    "evaluate_model",
    "pair_files",
    "predict_level0",
    "rasterize_polygons",
    "read_label_map",
]

log = logging.getLogger(__name__)

#: Default detection radius in µm: 6 px at 20x (0.5 µm/px), as CRC/MoNuSeg detection studies match.
DEFAULT_RADIUS_UM = 3.0
#: Metrics that need ground-truth masks (``None`` against points).
MASK_METRICS = ("pixel_accuracy", "pixel_f1", "pixel_iou", "object_dice", "mdice", "aji", "pq", "dq", "sq")
#: Detection metrics (centroids matched one-to-one within the radius).
DETECTION_METRICS = ("precision", "recall", "f1")
_COUNTS = ("n_pred", "n_gt", "tp", "fp", "fn")


def _radius_px(radius_um: float, radius_px: float | None, mpp: float | None, where: Path) -> float:
    if radius_px is not None:
        return float(radius_px)
    if mpp is None:
        raise MissingMppError(
            f"{where}: the ground truth carries no pixel size, needed for the {radius_um:g} µm matching radius; "
            "pass --mpp (µm per ground-truth pixel, e.g. 0.25 for MoNuSeg) or give the radius in pixels with "
            "--radius-px"
        )
    return radius_um / mpp


def _score(pred: Objects, truth: Objects, radius_px: float) -> dict[str, Any]:
    """Metrics of one image: all of them with both label maps, else detection only (mask metrics None)."""
    row: dict[str, Any] = dict.fromkeys(MASK_METRICS)
    if pred.labels is not None and truth.labels is not None:
        scores = evaluate_instances(pred.labels, truth.labels, radius_px=radius_px)
        tp = round(scores["recall"] * scores["n_gt"]) if scores["n_gt"] else 0
        row.update({k: scores[k] for k in MASK_METRICS + DETECTION_METRICS + ("n_pred", "n_gt")})
        row.update(tp=tp, fp=scores["n_pred"] - tp, fn=scores["n_gt"] - tp)
        return row
    centres, gt = pred.centres(), truth.centres()
    if truth.regions is not None and len(centres):
        import shapely

        inside = shapely.covers(truth.regions, shapely.points(centres[:, 1] + 0.5, centres[:, 0] + 0.5))
        if not inside.all():
            log.info("%d predicted object(s) outside the annotated regions are not counted", int((~inside).sum()))
        centres = centres[inside]
    det = detection_scores(centres, gt, radius_px)
    row.update({k: det[k] for k in DETECTION_METRICS + ("tp", "fp", "fn")}, n_pred=len(centres), n_gt=len(gt))
    return row


def _overlay(folder: Path | None, name: str, pred: np.ndarray | None, truth: np.ndarray | None,
             image: np.ndarray | None, used: set[str]) -> str | None:
    """Write ``folder/<name>.overlay.png`` (a ``-2``, ``-3``... suffix if the name repeats); ``None`` if not drawn."""
    if folder is None:
        return None
    if pred is None or truth is None:
        log.info("%s: no overlay (it needs label maps, or polygons, on both sides)", name)
        return None
    from .overlays import write_overlay

    stem, k = name, 1
    while stem in used:
        k += 1
        stem = f"{name}-{k}"
    used.add(stem)
    path = folder / f"{stem}.overlay.png"
    counts = write_overlay(path, pred, truth, image)
    log.info("%s: overlay %s (%s)", name, path, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return str(path)


def _overlay_dir(overlays: str | os.PathLike[str] | None) -> Path | None:
    if overlays is None:
        return None
    from .overlays import prepare_dir

    return prepare_dir(overlays)


def _check_radius(radius_um: float, radius_px: float | None) -> None:
    for name, value in (("radius_um", radius_um), ("radius_px", radius_px)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")


def evaluate_files(
    pred: str | os.PathLike[str],
    gt: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    radius_um: float = DEFAULT_RADIUS_UM,
    radius_px: float | None = None,
    point_classes: Sequence[str] | None = None,
    overlays: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Score prediction files against ground-truth files (two files, or two folders paired by stem).

    Parameters
    ----------
    pred, gt : str or os.PathLike
        See :func:`pair_files` and the module docstring for the forms.
    mpp : float, optional
        µm per ground-truth pixel; overrides the label map's metadata (points carry none).
    radius_um : float
        Detection matching radius in µm (default :data:`DEFAULT_RADIUS_UM`).
    radius_px : float, optional
        The radius in ground-truth pixels instead (then no pixel size is needed).
    point_classes : sequence of str, optional
        Point classes of point ground truth to keep (``None``: all, merged within 1 px).
    overlays : str or os.PathLike, optional
        Folder (created if absent) for one ``<name>.overlay.png`` per pair with label maps on both sides
        (:mod:`~wsi_weakseg.evaluate.overlays`; grey stand-in background, file mode has no image).

    Returns
    -------
    dict
        ``images`` (one row per pair: ``name``, ``pred``, ``gt``, ``gt_kind``, ``mpp``, ``radius_px``, the
        metrics of :data:`MASK_METRICS` and :data:`DETECTION_METRICS`, ``None`` where undefined, and the
        counts ``n_pred``, ``n_gt``, ``tp``, ``fp``, ``fn``), ``mean``, ``pooled``, ``radius_um``,
        ``radius_px`` (as given) — plain Python values; with ``overlays``, rows drawn carry ``overlay`` (path).
    """
    _check_radius(radius_um, radius_px)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
    folder, used = _overlay_dir(overlays), set()
    rows = []
    for name, p, g in pair_files(pred, gt):
        if file_kind(g) == "labels":
            truth = read_truth(g, None, point_classes)
            objects = read_prediction(p, truth.labels.shape)
        else:
            if radius_px is None and mpp is None:
                _radius_px(radius_um, None, None, g)  # fail before reading anything
            objects = read_prediction(p, None)
            size = None if objects.labels is None else objects.labels.shape[::-1]
            truth = read_truth(g, size, point_classes)
        used_mpp = mpp if mpp is not None else truth.mpp
        r_px = _radius_px(radius_um, radius_px, used_mpp, g)
        kind = "labels" if truth.labels is not None else "points"
        row = {"name": name, "pred": str(p), "gt": str(g), "gt_kind": kind, "mpp": used_mpp, "radius_px": r_px,
               **_score(objects, truth, r_px)}
        log.info("%s: AJI %s, F1 %.4f", name, row["aji"], row["f1"])
        drawn = _overlay(folder, name, objects.labels, truth.labels, None, used)
        if drawn:
            row["overlay"] = drawn
        rows.append(row)
    return _report(rows, radius_um=None if radius_px is not None else radius_um, radius_px=radius_px, mode="files")


def _report(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    mean: dict[str, Any] = {"n_images": len(rows)}
    for key in MASK_METRICS + DETECTION_METRICS:
        values = [r[key] for r in rows if r[key] is not None]
        mean[key] = float(np.mean(values)) if values else None
    sums = {k: int(sum(r[k] for r in rows)) for k in _COUNTS}
    n_pred, n_gt, tp = sums["n_pred"], sums["n_gt"], sums["tp"]
    if n_pred or n_gt:  # the conventions of detection_scores
        rates = {"precision": tp / n_pred if n_pred else 0.0, "recall": tp / n_gt if n_gt else 0.0,
                 "f1": 2 * tp / (n_pred + n_gt)}
    else:
        rates = dict.fromkeys(DETECTION_METRICS, 1.0)
    pooled = {**sums, **rates}
    return {**extra, "images": rows, "mean": mean, "pooled": pooled}


def evaluate_model(
    spec: str | os.PathLike[str] | Any,
    *,
    model: str | os.PathLike[str] | Any = None,
    split: str = "validation",
    device: str = "auto",
    radius_um: float = DEFAULT_RADIUS_UM,
    radius_px: float | None = None,
    overlays: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run a model in memory on the items of a data spec's split and score them like :func:`evaluate_files`.

    Each item is compared with its ``labels`` map when it has one, else with its points (item classes,
    regions and pixel size apply). Plain images are predicted whole; slides over the bounding box of their
    annotated regions (at most :data:`~wsi_weakseg.engine.whole.MAX_REGION_PIXELS`; larger ones raise
    :class:`~wsi_weakseg.errors.ConfigError`: segment them and evaluate the outputs). Labels come from
    :func:`~wsi_weakseg.engine.whole.predict_level0` (card tile size and context, every tile, tissue or not;
    the path validation and tuning use too): on a plain image with tissue everywhere, the labels ``segment``
    writes.

    Parameters
    ----------
    spec : path or DataSpec
        The data spec (see :mod:`wsi_weakseg.weak.spec`).
    model : str, path or Model, optional
        Packaged model name, model folder or loaded model; ``None`` is the packaged default.
    split : str
        ``train``, ``validation`` (default) or ``test``.
    device : str
        ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
    radius_um, radius_px : float
        As in :func:`evaluate_files` (pixels are level-0 pixels of each item).
    overlays : str or os.PathLike, optional
        As in :func:`evaluate_files`, for the items with label maps, over the item's image.

    Returns
    -------
    dict
        As :func:`evaluate_files`, plus ``model``, ``spec`` and ``split``.
    """
    from wsi_weakseg.weak.spec import DataSpec, load_spec

    _check_radius(radius_um, radius_px)
    folder, used = _overlay_dir(overlays), set()
    spec = spec if isinstance(spec, DataSpec) else load_spec(spec)
    items = spec.split(split)
    if not items:
        present = sorted({i.split for i in spec.items})
        raise ConfigError(f"{spec.path}: no items in split {split!r} (splits present: {', '.join(present)}); "
                          "choose one with --split")
    from wsi_weakseg.engine.inference import Predictor  # torch: only once the spec is known to be usable
    from wsi_weakseg.model.card import DEFAULT_MODEL, Model, load_model

    model = model if isinstance(model, Model) else load_model(model or DEFAULT_MODEL)
    if not model.card.trained:
        log.warning("model %r is not a trained model: %s", model.card.name, model.card.description)
    predictor = Predictor(model.net, model.card, device)
    rows = [_evaluate_item(item, model.card.name, predictor, radius_um, radius_px, (folder, used)) for item in items]
    return _report(rows, radius_um=None if radius_px is not None else radius_um, radius_px=radius_px, mode="model",
                   model=model.card.name, spec=str(spec.path), split=split)


def _evaluate_item(item: Any, name: str, predictor: Any, radius_um: float, radius_px: float | None,
                   overlays: tuple[Path | None, set[str]] = (None, set())) -> dict[str, Any]:
    from shapely import affinity

    from wsi_weakseg.slide import open_slide
    from wsi_weakseg.weak.spec import load_item_points

    points = load_item_points(item)  # also checks the pixel size
    with open_slide(item.image, mpp=item.mpp) as slide:
        region = points.regions if item.kind == "slide" else None
        labels, (x0, y0) = predict_level0(slide, predictor, region)
        bx, by = slide.bounds[:2]
        mpp, level0 = slide.mpp, slide.dimensions[::-1]
        h, w = labels.shape
        rgb = slide.read_region(0, x0, y0, w, h) if overlays[0] is not None and item.labels is not None else None
    if item.labels is not None:
        gt, _ = read_label_map(item.labels)
        if gt.shape != level0:
            raise ConfigError(f"{item.labels}: label map is {gt.shape[1]}x{gt.shape[0]} px but the image is "
                              f"{level0[1]}x{level0[0]}; they must share the pixel grid")
        truth = Objects(labels=gt[y0 : y0 + h, x0 : x0 + w])
    else:  # points are relative to the bounds origin; the window is absolute
        regions = None if points.regions is None else affinity.translate(points.regions, bx - x0, by - y0)
        truth = Objects(points_rc=points.rc() + [by - y0, bx - x0], regions=regions)
    r_px = _radius_px(radius_um, radius_px, mpp, item.image)
    row = {"name": item.image.stem, "pred": name, "gt": str(item.labels or item.points),
           "gt_kind": "labels" if item.labels is not None else "points", "mpp": mpp, "radius_px": r_px,
           **_score(Objects(labels=labels), truth, r_px)}
    log.info("%s: AJI %s, F1 %.4f", row["name"], row["aji"], row["f1"])
    drawn = _overlay(overlays[0], row["name"], labels, truth.labels, rgb, overlays[1])
    if drawn:
        row["overlay"] = drawn
    return row


def predict_level0(slide: Any, predictor: Any, region: Any = None) -> tuple[np.ndarray, tuple[int, int]]:
    """A model's instance labels on level-0 pixels (:func:`wsi_weakseg.engine.whole.predict_level0`; torch loads here)."""
    from wsi_weakseg.engine.whole import predict_level0 as predict

    return predict(slide, predictor, region)
