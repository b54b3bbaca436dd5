"""``segment``: one slide in, QuPath detections and OME-Zarr maps out.

Stages, each a function with plain inputs and outputs: plan the tiles (tissue, ROI; :mod:`.plan`),
:func:`infer_maps` tile by tile into an OME-Zarr store, :func:`extract_instances` blockwise exactly once
and relabel them to consecutive ids, :func:`write_geojson`, build the pyramids, write ``run.json``
(:mod:`.provenance`). Everything is written inside a hidden working folder in the output directory and
renamed into place at the end (:mod:`.outputs`), so a failure publishes nothing; finished tiles and blocks in
that folder are reused when the same command runs again after a kill (:mod:`.resume`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import (
    ConfigError,
    NoTissueError,
    OutputError,
    ProcessingError,
    WsiWeaksegError,
)
from ..model.card import DEFAULT_MODEL, DETECT_SEGMENT, REGIONS, Model, load_model
from .features import DetectionFormat
from .inference import Predictor, predict_tiles, resolve_device
from .instances import InstanceParams, params_from_card
from .lock import segment_lock
from .merge import iter_texts
from .nuclei_regions import load_regions
from .options import NOT_RECORDED, SegmentOptions, options_record  # noqa: F401 - re-exported
from .outputs import (
    OutputNames,
    check_collision,
    output_names,
    previous_run,
    publish_all,
    stale_outputs,
)
from .pictures import write_pictures
from .plan import Frame, TilePlan, plan_tiles, selection_margin
from .progress import ProgressCounter, progress_bar
from .provenance import (
    StageClock,
    model_record,
    slide_fingerprint,
    slide_record,
    versions,
    working_record,
)
from .regions import TissueSelection, load_roi, select_tissue
from .resume import Partial, file_digest, resumable, run_key
from .schedule import Instances, InstanceStage
from .smooth import DEFAULT_TOLERANCE

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """Paths written and headline numbers of one run."""

    geojson: Path
    zarr: Path
    run_json: Path
    n_nuclei: int
    n_oversized: int
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    pictures: list[Path] = field(default_factory=list)  # preview and overlays, as published
    n_regions: int = 0  # region annotations of a regions model (engine/region_model.py)


def instance_params(model: Model, mpp: float) -> InstanceParams:
    """The card's thresholds in working pixels at the working pixel size ``mpp``."""
    return params_from_card(model.card, mpp)


def infer_maps(model: Model, view, plan: TilePlan, out, opts: SegmentOptions, partial: Partial | None = None,
               on_tiles: Callable[[list[tuple[int, int]]], None] | None = None) -> str:
    """Predict the planned tiles of ``view`` into ``out`` (K, H, W); return the device used.

    Tiles ``partial`` holds are skipped and each finished batch is recorded there; ``on_tiles(origins)``
    is told of every batch written (the instance stage starts the blocks waiting for them).
    """
    predictor = Predictor(model.net, model.card, opts.device)
    done = partial.reused_tiles if partial is not None else set()
    todo = [t for t in plan.tiles if t not in done]

    def finished(origins: list[tuple[int, int]]) -> None:
        if partial is not None:
            partial.record_tiles(origins)
        bar.update(len(origins))
        if on_tiles is not None:
            on_tiles(origins)

    with progress_bar(len(plan.tiles), "infer tiles", opts.progress) as bar:
        bar.update(len(plan.tiles) - len(todo))
        predict_tiles(
            predictor, view.read, tuple(view.shape), out, todo, plan.tile, model.card.context_px,
            opts.batch_size, opts.num_workers, on_batch=finished,
        )
    return str(predictor.device)


def instance_stage(maps, work: Path, params: InstanceParams, opts: SegmentOptions, bar, anchor_filter=None,
                   formatter=None, waiting=(), tile: int = 0) -> InstanceStage:
    """The blockwise instance stage of a run (:mod:`.schedule`), blocks waiting for the tiles in ``waiting``."""
    return InstanceStage(maps, work, params, opts.block_size, opts.num_workers, waiting, tile,
                         on_done=lambda: bar.update(1), anchor_filter=anchor_filter, formatter=formatter,
                         outlines=opts.outlines)


def extract_instances(maps, labels_out, work: Path, params: InstanceParams, opts: SegmentOptions,
                      anchor_filter=None, formatter=None) -> Instances:
    """Nuclei of complete maps (K, H, W), blockwise and exactly once; consecutive ids written to ``labels_out``.

    ``work`` receives the label-key array and the per-block nucleus records; blocks whose record an
    interrupted run left there are reused (:mod:`.resume`). :func:`segment` runs the same stage overlapped
    with inference.
    """
    with progress_bar(0, "instances", opts.progress) as bar, \
            instance_stage(maps, work, params, opts, bar, anchor_filter, formatter) as stage:
        bar.total = len(stage.blocks)
        bar.update(len(stage.reused))
        return stage.finish(labels_out)


def write_geojson(path: Path, instances: Instances, compress: bool) -> int:
    """Stream the nuclei in raster order of their anchors, ids 1, 2, ...; return how many were written."""
    from ..io.geojson import GeoJSONWriter

    n = 0
    with GeoJSONWriter(path, compress=compress) as out:
        for nid, (head, tail) in enumerate(iter_texts(instances.record_dir, instances.blocks), start=1):
            out.write_serialized(f"{head}{nid}{tail}")
            n += 1
    if n != len(instances.sorted_keys):
        raise ProcessingError(f"internal error: {n} polygons for {len(instances.sorted_keys)} labels")
    return n


def segment(
    slide_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: str | os.PathLike | Model = DEFAULT_MODEL,
    options: SegmentOptions | None = None,
) -> SegmentResult:
    """Segment every nucleus of a slide and write QuPath GeoJSON, OME-Zarr maps and ``run.json``.

    Parameters
    ----------
    slide_path : path
        Whole-slide image (SVS, NDPI, MRXS, SCN, tiled TIFF ...) or plain image (PNG, JPEG, TIFF).
    output_dir : path
        Folder receiving ``<stem>.geojson`` (or ``.geojson.gz``), ``<stem>.ome.zarr`` and ``<stem>.run.json``.
    model : str, path or Model
        Packaged model name, model folder, or a loaded model.
    options : SegmentOptions, optional

    Returns
    -------
    SegmentResult

    Raises
    ------
    UserInputError
        Bad input (missing/corrupt slide, missing mpp, bad options, no tissue, unwritable output, outputs
        of another slide in the way).
    ProcessingError
        Failure after the inputs were validated.
    """
    from ..slide import open_slide

    opts = options or SegmentOptions()
    clock = StageClock()
    model = model if isinstance(model, Model) else load_model(model)
    tile = opts.validate(model.card.tile_size)
    if opts.regions is not None and model.card.model_type == REGIONS:
        raise ConfigError(f"--regions counts nuclei per region: give a nucleus model, not the regions model "
                          f"{model.card.name!r} (run it without --regions to draw the regions)")
    if not model.card.trained:
        log.warning("model %r is not a trained model: %s", model.card.name, model.card.description or "no description")
    slide_path, output_dir = Path(slide_path), Path(output_dir)
    slide = open_slide(slide_path, mpp=opts.mpp)
    try:
        return _segment_slide(slide, slide_path, output_dir, model, opts, tile, clock)
    except WsiWeaksegError:
        raise
    except OSError as exc:
        raise OutputError(f"writing outputs to {output_dir} failed: {exc}") from exc
    finally:
        slide.close()


def _segment_slide(slide, slide_path: Path, output_dir: Path, model: Model, opts: SegmentOptions, tile: int,
                   clock: StageClock) -> SegmentResult:
    """:func:`segment` on an open slide: plan, then run the stages in a staging folder and publish."""
    names = output_names(slide_path, opts.compress)
    with segment_lock(output_dir, names.stem):
        if model.card.model_type == REGIONS:  # one class's map → region annotations, no nuclei
            from .region_model import segment_regions

            return segment_regions(slide, slide_path, output_dir, model, opts, tile, clock, names)
        return _segment_locked(slide, slide_path, output_dir, model, opts, tile, clock, names)


def _segment_locked(slide, slide_path: Path, output_dir: Path, model: Model, opts: SegmentOptions, tile: int,
                    clock: StageClock, names: OutputNames) -> SegmentResult:
    """:func:`_segment_slide` holding the lock of the slide's outputs."""
    from ..slide import WorkingView

    card = model.card
    fingerprint = slide_fingerprint(slide_path)
    previous = previous_run(output_dir, names)
    check_collision(previous, names, slide_path, fingerprint, output_dir)
    view = WorkingView(slide, card.mpp)
    frame = Frame.from_view(view, slide)
    params = instance_params(model, view.mpp)
    roi = load_roi(opts.roi)
    regions = load_regions(opts.regions)
    tissue = select_tissue(opts.tissue, slide)
    plan = plan_tiles(frame, tile, selection_margin(card.context_px, params), tissue.has_tissue, roi)
    if not plan.tiles:
        raise NoTissueError(_no_tissue_message(slide_path, tissue.rule, roi is not None))
    clock.lap("open_and_tissue")
    H, W = view.shape
    log.info("%s: %d x %d working px at %.4f µm/px, %d tiles of %d", slide_path.name, W, H, view.mpp, len(plan.tiles), tile)

    key = _resume_key(fingerprint, model, opts, tile, view.mpp)
    with resumable(output_dir, names.stem, key) as partial:
        tmp = partial.folder
        store, maps = _open_maps(tmp, names, card, opts, tile, frame, view, slide)
        cls = card.classes[0]
        formatter = DetectionFormat(
            fingerprint=fingerprint, model_sha=model.sha256, scale=frame.scale, offset=frame.offset, mpp=view.mpp,
            class_name=cls["name"], color=tuple(cls["color"]), regions=regions,
        )
        anchor_filter = None if roi is None else functools.partial(frame.anchors_in, roi)
        waiting = [t for t in plan.tiles if t not in partial.reused_tiles]
        counter = ProgressCounter(opts.on_progress)  # tiles inferred + blocks finished
        with progress_bar(0, "instances", opts.progress) as bar, instance_stage(
                maps, tmp, params, opts, counter.bar(bar), anchor_filter, formatter, waiting, plan.tile) as stage:
            bar.total = len(stage.blocks)
            bar.update(len(stage.reused))
            counter.start(len(plan.tiles) + len(stage.blocks), len(partial.reused_tiles) + len(stage.reused))

            def tiles_done(origins: list[tuple[int, int]]) -> None:
                stage.tiles_done(origins)
                counter.add(len(origins))

            device = infer_maps(model, view, plan, maps, opts, partial, tiles_done)
            clock.lap("inference")  # blocks whose tiles were done ran meanwhile
            inst = stage.finish(store.labels["nuclei"])
        clock.lap("instances")
        n = write_geojson(tmp / names.geojson, inst, opts.compress)
        per_region = _nuclei_per_region(regions, inst, frame, slide, roi)
        clock.lap("geojson")
        pictures = write_pictures(tmp, names.stem, slide, view, tissue, inst.sorted_keys, store.labels["nuclei"],
                                  opts.overlays, opts.preview)
        clock.lap("pictures")
        _warn_outlines(slide_path, inst, card)
        store.finalize()
        clock.lap("pyramid")
        run = _run_record(slide, slide_path, fingerprint, model, view, opts, plan, params, device, tissue,
                          n, inst, clock) | {"pictures": pictures,
                                             "resumed": {"tiles_reused": len(partial.reused_tiles),
                                                         "blocks_reused": inst.n_reused}, **per_region}
        (tmp / names.run_json).write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n")
        files = pictures.get("files", [])
        final = _publish(tmp, output_dir, names, files, stale_outputs(previous, names, output_dir, files))
        counter.finish()
    return SegmentResult(
        geojson=final[names.geojson], zarr=final[names.zarr], run_json=final[names.run_json], n_nuclei=n,
        n_oversized=inst.n_oversized, timings=clock.wall(), pictures=[final[f] for f in files],
    )


def _open_maps(tmp: Path, names: OutputNames, card, opts: SegmentOptions, tile: int, frame: Frame, view, slide):
    """The run's OME-Zarr store (resumable) and the maps inference writes into: the store's image, or for a
    detect-and-segment model the image with the anchor offsets beside it (:mod:`.anchored`)."""
    from ..io.omezarr import OmeZarrWriter, grid_translation_um

    fx, fy = frame.offset
    store = OmeZarrWriter(tmp / names.zarr, tuple(view.shape), view.mpp, card.heads, chunk=tile,
                          label_chunk=opts.block_size, name=names.stem,
                          translation_um=grid_translation_um((fy, fx), frame.scale, slide.mpp), resume=True)
    if card.model_type != DETECT_SEGMENT:
        return store, store.image
    from .anchored import AnchoredMaps

    return store, AnchoredMaps.create(store.image, tmp / "anchors.zarr", tile)


def _warn_outlines(slide_path: Path, inst, card) -> None:
    """Warn about oversized nuclei and outlines repaired before writing (both counted in run.json)."""
    _warn_oversized(slide_path, inst.n_oversized, card)
    if inst.n_repaired:
        log.warning("%s: %d nucleus outline(s) traced invalid were repaired before writing (run.json "
                    "nuclei_repaired); please report the slide if this is frequent", slide_path.name, inst.n_repaired)


def _resume_key(fingerprint: str, model: Model, opts: SegmentOptions, tile: int, mpp: float) -> str:
    """What the maps and nuclei of a run depend on: a run with another key never reuses this one's work."""
    affecting = {k: v for k, v in options_record(opts).items()
                 if k not in ("progress", "preview", "overlays", "num_workers", "compress", "device")}
    return run_key({
        "version": __version__, "work_format": 2, "slide": fingerprint, "model": model.sha256, "tile": tile, "mpp": mpp,
        "device": resolve_device(opts.device).type, "options": affecting,
        "roi": file_digest(opts.roi), "tissue": file_digest(opts.tissue), "regions": file_digest(opts.regions),
    })


def _nuclei_per_region(regions, inst: Instances, frame: Frame, slide, roi) -> dict[str, Any]:
    """``run.json``'s ``nuclei_per_region`` (nuclei, mm² inside the slide and ROI, nuclei/mm² per class), or {}."""
    if regions is None:
        return {}
    from shapely.geometry import box

    from .nuclei_regions import count_per_region, region_density_record

    within = box(0, 0, *slide.bounds[2:])
    within = within if roi is None else within.intersection(roi)
    counts = count_per_region(regions, inst.record_dir, inst.blocks, frame.scale, frame.offset)
    return {"nuclei_per_region": region_density_record(regions, counts, slide.mpp, within)}


def _publish(tmp: Path, output_dir: Path, names: OutputNames, pictures: list[str], stale: list[Path]) -> dict[str, Path]:
    """Move the staged outputs into ``output_dir`` and remove ``stale`` files, all or nothing."""
    final = {name: output_dir / name for name in (names.zarr, names.geojson, *pictures, names.run_json)}
    publish_all({tmp / name: dst for name, dst in final.items()}, tmp, stale)
    return final


def _warn_oversized(slide_path: Path, n_oversized: int, card) -> None:
    if n_oversized and card.model_type == DETECT_SEGMENT:
        log.warning("%s: %d nucle%s reach the edge of the model's mask window (window_um = %g µm) and were cut there; "
                    "inspect them (large or merged nuclei) or use a model with a larger window",
                    slide_path.name, n_oversized, "us" if n_oversized == 1 else "i", card.window_um)
    elif n_oversized:
        max_reach_um = card.max_reach_um
        log.warning(
            "%s: %d nucle%s reach the model's geodesic reach from their marker (max_reach_um = %g µm) and were cut there; "
            "inspect them (large or merged nuclei) or use a model card with a larger max_reach_um",
            slide_path.name, n_oversized, "us" if n_oversized == 1 else "i", max_reach_um,
        )


def _run_record(slide, slide_path: Path, fingerprint: str, model: Model, view, opts: SegmentOptions,
                plan: TilePlan, params: InstanceParams, device: str, tissue: TissueSelection, n: int,
                inst: Instances, clock: StageClock) -> dict[str, Any]:
    """The content of ``run.json``."""
    return {
        "wsi_weakseg_version": __version__,
        **slide_record(slide, slide_path, fingerprint),
        "model": model_record(model),
        "working": working_record(view),
        "config": {**options_record(opts), "tile_size": plan.tile, "context_px": model.card.context_px,
                   "halo_px": params.halo, "instance_params": asdict(params),
                   "outline_tolerance_px": DEFAULT_TOLERANCE if opts.outlines == "smooth" else None},
        "device": device,
        "versions": versions(),
        "tiles": {"total": plan.total, "processed": len(plan.tiles), "selection_margin_px": plan.margin},
        "tissue": tissue.record(),
        "nuclei": n,
        "nuclei_oversized": inst.n_oversized,
        "nuclei_repaired": inst.n_repaired,
        "timings_s": clock.wall(),
        "cpu_s": clock.cpu(),
    }


def _no_tissue_message(slide_path: Path, rule: str, with_roi: bool) -> str:
    where = " inside --roi" if with_roi else ""
    if rule == "annotations":
        return f"no tissue found in {slide_path}{where}: no --tissue annotation overlaps it; check the files"
    if rule == "all":
        return f"no tissue found in {slide_path}{where}: the ROI does not overlap the image; check the ROI file"
    return (f"no tissue found in {slide_path}{where}; check the slide (or the ROI file), or pass --tissue all "
            "(or --tissue FILE) to choose the region yourself")
