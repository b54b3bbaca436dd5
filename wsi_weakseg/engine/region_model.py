"""``segment`` with a ``regions`` model: one class's probability map → QuPath region annotations.

The same stages as for nuclei where they are the same job: the slide is read at the card's pixel size
(:class:`~wsi_weakseg.slide.WorkingView`), tiles are planned on tissue with the card's context as margin and
predicted with context into the OME-Zarr image (:func:`~wsi_weakseg.engine.segment.infer_maps`, journalled
for resume), and everything is staged and published all or nothing. Then, instead of the blockwise instance
stage, the stitched map of the whole slide is thresholded and traced (:mod:`.region_polygons`; its memory
bound is stated there), and the regions are written as classified annotations.

Outputs: ``<stem>.geojson`` (annotations, classified with the card's class name and colour, holes kept,
level-0 pixels relative to the bounds origin), ``<stem>.ome.zarr`` (image ``region``: uint8 probability x
255; labels ``regions``: the kept regions' ids, equal to each annotation's ``Label``, 0 outside the ROI) and ``<stem>.run.json``
(``regions``: count, area per class in mm², fraction of the tissue).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from .. import __version__
from ..errors import NoTissueError
from ..io.geojson import GeoJSONWriter, annotation_feature, stable_uuid
from .plan import Frame, plan_tiles
from .progress import ProgressCounter
from .provenance import (
    model_record,
    slide_fingerprint,
    slide_record,
    versions,
    working_record,
)
from .region_pictures import write_region_pictures
from .region_polygons import (
    check_mask_size,
    label_counts,
    mean_per_label,
    region_labels,
    region_params,
    region_polygons,
    simplified,
)
from .regions import load_roi, select_tissue
from .resume import resumable

log = logging.getLogger(__name__)

_STRIPE = 1024  # rows of labels tested against the ROI at a time


def segment_regions(slide, slide_path: Path, output_dir: Path, model, opts, tile: int, clock, names):
    """:func:`~wsi_weakseg.engine.segment.segment` for a regions model, holding the lock of the slide's outputs."""
    from ..io.omezarr import OmeZarrWriter, grid_translation_um
    from ..slide import WorkingView
    from .outputs import check_collision, previous_run, stale_outputs
    from .segment import (
        SegmentResult,
        _no_tissue_message,
        _publish,
        _resume_key,
        infer_maps,
    )

    card = model.card
    fingerprint = slide_fingerprint(slide_path)
    previous = previous_run(output_dir, names)
    check_collision(previous, names, slide_path, fingerprint, output_dir)
    view = WorkingView(slide, card.mpp)
    check_mask_size(view.shape, slide_path)
    frame = Frame.from_view(view, slide)
    roi = load_roi(opts.roi)
    tissue = select_tissue(opts.tissue, slide)
    plan = plan_tiles(frame, tile, card.context_px, tissue.has_tissue, roi)
    if not plan.tiles:
        raise NoTissueError(_no_tissue_message(slide_path, tissue.rule, roi is not None))
    clock.lap("open_and_tissue")
    H, W = view.shape
    log.info("%s: regions model %r, %d x %d working px at %.4f µm/px, %d tiles of %d", slide_path.name, card.name,
             W, H, view.mpp, len(plan.tiles), tile)
    with resumable(output_dir, names.stem, _resume_key(fingerprint, model, opts, tile, view.mpp)) as partial:
        tmp = partial.folder
        store = OmeZarrWriter(tmp / names.zarr, (H, W), view.mpp, card.heads, chunk=tile, label_chunk=opts.block_size,
                              labels=("regions",), name=names.stem, resume=True,
                              translation_um=grid_translation_um(frame.offset[::-1], frame.scale, slide.mpp))
        counter = ProgressCounter(opts.on_progress)
        counter.start(len(plan.tiles), len(partial.reused_tiles))
        device = infer_maps(model, view, plan, store.image, opts, partial, lambda origins: counter.add(len(origins)))
        clock.lap("inference")
        params = region_params(card, view.mpp)
        regions, labels = stitched_regions(store, params, frame, roi)
        clock.lap("regions")
        cls = card.classes[0]
        written = write_region_geojson(tmp / names.geojson, regions, params.simplify_px, cls,
                                       (fingerprint, model.sha256), view.mpp, opts.compress)
        clock.lap("geojson")
        summary = regions.record(cls["name"], view.mpp, tissue.area_mm2)
        pictures = write_region_pictures(tmp, names.stem, slide, view, tissue, labels, cls, summary, opts.overlays,
                                         opts.preview)
        del labels
        clock.lap("pictures")
        store.finalize()
        clock.lap("pyramid")
        run = _run_record(slide, slide_path, fingerprint, model, view, opts, plan, params, device, tissue,
                          clock) | {"regions": summary | {"features": written}, "pictures": pictures,
                                    "resumed": {"tiles_reused": len(partial.reused_tiles)}}
        (tmp / names.run_json).write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n")
        files = pictures.get("files", [])
        final = _publish(tmp, output_dir, names, files, stale_outputs(previous, names, output_dir, files))
        counter.finish()
    return SegmentResult(geojson=final[names.geojson], zarr=final[names.zarr], run_json=final[names.run_json],
                         n_nuclei=0, n_oversized=0, timings=clock.wall(), n_regions=regions.count,
                         pictures=[final[f] for f in files])


def stitched_regions(store, params, frame: Frame, roi=None) -> tuple[RegionSet, np.ndarray]:
    """The regions of the store's whole level-0 map and their label image (0 outside ``roi``), also written
    into the store's ``regions`` label image."""
    prob = store.image[0]
    labels, n = region_labels(prob, params)
    regions = RegionSet.of(labels, n, prob, frame, roi)
    _write_labels(store.labels["regions"], labels)
    return regions, labels


def _run_record(slide, slide_path: Path, fingerprint: str, model, view, opts, plan, params, device: str, tissue,
                clock) -> dict[str, Any]:
    """``run.json`` of a regions run, less its ``regions`` and ``resumed`` entries."""
    from .segment import options_record

    return {
        "wsi_weakseg_version": __version__, **slide_record(slide, slide_path, fingerprint),
        "model": model_record(model), "working": working_record(view),
        "config": {**options_record(opts), "tile_size": plan.tile, "context_px": model.card.context_px,
                   "region_params": asdict(params)},
        "device": device, "versions": versions(),
        "tiles": {"total": plan.total, "processed": len(plan.tiles), "selection_margin_px": plan.margin},
        "tissue": tissue.record(), "timings_s": clock.wall(), "cpu_s": clock.cpu(),
    }


def _write_labels(target, labels: np.ndarray) -> None:
    """Region ids into the OME-Zarr label image, a stripe of chunks at a time (no whole uint32 copy)."""
    step = target.chunks[0]
    for y in range(0, labels.shape[0], step):
        target[y : y + step] = labels[y : y + step].astype(np.uint32)


class RegionSet:
    """The kept regions: pixel-edge polygons in working pixels (clipped to the ROI), ids, mean probabilities.

    Attributes
    ----------
    polygons : list of shapely.Polygon or MultiPolygon
        Region ``ids[i]``'s outline in working pixels, inside the ROI when there is one (regions
        with no pixel centre inside it dropped).
    ids : ndarray of int
        Label ids (``labels/regions`` in the OME-Zarr), ascending.
    mean_probability : ndarray of float
        Mean class probability over each region's pixels.
    frame : Frame
        Working grid → output frame.
    """

    def __init__(self, polygons: list, ids: np.ndarray, mean_probability: np.ndarray, frame: Frame) -> None:
        self.polygons, self.ids, self.mean_probability, self.frame = polygons, ids, mean_probability, frame

    @classmethod
    def of(cls, labels: np.ndarray, n: int, prob: np.ndarray, frame: Frame, roi=None) -> RegionSet:
        """Trace regions ``1..n`` of ``labels`` and clip them to ``roi`` (output frame), if given.

        With a ROI, ``labels`` is changed in place (no second int32 image) to match the clipped polygons: a
        pixel whose centre is not strictly inside the ROI becomes 0, a region left with no pixel is dropped
        (a sliver of its polygon may lie in the ROI), and the mean probabilities are over the pixels kept.
        So the clipped polygons rasterised at pixel centres are the label image, and its ids are the kept
        ``ids``.
        """
        polygons = region_polygons(labels, n)
        ids = np.arange(1, n + 1)
        if roi is not None and polygons:
            (ox, oy), s = frame.offset, frame.scale
            roi_w = shapely.transform(roi, lambda xy: (xy - np.array([ox, oy])) / s)
            clear_outside(labels, roi_w)
            keep = np.flatnonzero(label_counts(labels, n)[1:] > 0)
            clipped = shapely.intersection(np.asarray([polygons[i] for i in keep], dtype=object), roi_w)
            polygons, ids = list(clipped), ids[keep]
        means = mean_per_label(prob, labels, n)[ids - 1] / 255.0
        return cls(polygons, ids, means, frame)

    @property
    def count(self) -> int:
        return len(self.polygons)

    def area_um2(self, mpp: float) -> float:
        """Total area of the regions' pixels (inside the ROI) in µm²."""
        return float(sum(p.area for p in self.polygons)) * mpp**2

    def record(self, class_name: str, mpp: float, tissue_mm2: float) -> dict[str, Any]:
        """The ``regions`` entry of ``run.json``."""
        area = self.area_um2(mpp) / 1e6
        return {"count": self.count, "area_mm2_by_class": {class_name: round(area, 6)},
                "fraction_of_tissue": round(area / tissue_mm2, 6) if tissue_mm2 > 0 else None}

    def to_output(self, geom):
        """A working-pixel geometry in the output frame (level-0 pixels relative to the bounds origin)."""
        (ox, oy), s = self.frame.offset, self.frame.scale
        return shapely.transform(geom, lambda xy: xy * s + np.array([ox, oy]))


def clear_outside(labels: np.ndarray, roi_w) -> None:
    """Set to 0, in place, the labelled pixels whose centre is not strictly inside ``roi_w`` (working pixels).

    Only labelled pixels are tested, a stripe of rows at a time (bounded memory).
    """
    shapely.prepare(roi_w)
    for y in range(0, labels.shape[0], _STRIPE):
        stripe = labels[y : y + _STRIPE]
        r, c = np.nonzero(stripe)
        out = ~shapely.contains_xy(roi_w, c + 0.5, r + y + 0.5)
        stripe[r[out], c[out]] = 0


def write_region_geojson(path: Path, regions: RegionSet, simplify_px: float, cls: dict[str, Any],
                         id_parts: tuple[str, str], mpp: float, compress: bool) -> int:
    """Write each region polygon as a classified QuPath annotation; return the number of features.

    A region is one feature per polygon part (a region the ROI or simplification splits gives several), with
    measurements ``Label`` (its id in ``labels/regions``), ``Area µm^2`` (of the polygon as written) and
    ``Mean probability``. Ids are stable: the slide fingerprint, model sha256, region id and part index.
    """
    with GeoJSONWriter(path, compress=compress) as out:
        for rid, poly, mean in zip(regions.ids.tolist(), regions.polygons, regions.mean_probability.tolist()):
            parts = [p for p in shapely.get_parts(poly) if p.geom_type == "Polygon" and p.area > 0]
            for k, part in enumerate(simplified(parts, simplify_px)):
                ring = regions.to_output(part)
                out.write(annotation_feature(
                    stable_uuid(*id_parts, "region", rid, k), np.asarray(ring.exterior.coords),
                    holes=[np.asarray(h.coords) for h in ring.interiors], class_name=cls["name"],
                    color=tuple(cls["color"]),
                    measurements={"Label": rid, "Area µm^2": round(part.area * mpp**2, 4),
                                  "Mean probability": round(mean, 4)},
                ))
        return out.count
