"""``segment``: one slide in, QuPath detections and OME-Zarr maps out.

Stages: open the slide at the model's pixel size, find tissue, predict maps tile by tile into an
OME-Zarr store, extract nuclei blockwise exactly once, relabel to consecutive ids, stream the GeoJSON,
build the pyramids, write ``run.json``. Everything is written inside a hidden temporary folder in the
output directory and renamed into place at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import ConfigError, NoTissueError, OutputError, WsiWeaksegError, ProcessingError
from ..model.card import DEFAULT_MODEL, Model, load_model
from .inference import STRIDE, Predictor, predict_tiles, tile_origins
from .instances import InstanceParams, params_from_card
from .features import DetectionFormat
from .merge import block_grid, iter_nuclei, run_blocks, write_label_ids
from .progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class SegmentOptions:
    """Run options (the CLI flags). ``None`` means the model card's value."""

    tile_size: int | None = None
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"
    block_size: int = 1024
    mpp: float | None = None
    roi: str | None = None
    compress: bool = False
    progress: bool = True

    def validate(self, card_tile: int) -> int:
        tile = card_tile if self.tile_size is None else self.tile_size
        if not isinstance(tile, int) or tile <= 0 or tile % STRIDE:
            raise ConfigError(f"--tile-size must be a positive multiple of {STRIDE} (e.g. 512), got {tile}")
        if self.block_size <= 0 or self.block_size % STRIDE:
            raise ConfigError(f"--block-size must be a positive multiple of {STRIDE}, got {self.block_size}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_workers < 1:
            raise ConfigError(f"--num-workers must be >= 1, got {self.num_workers}")
        return tile


class StageClock:
    """Wall and process-CPU seconds per stage (laps); CPU counts every thread of this process."""

    def __init__(self) -> None:
        self._start = self._last = (time.perf_counter(), time.process_time())
        self.laps: dict[str, tuple[float, float]] = {}

    def lap(self, stage: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.laps[stage] = (now[0] - self._last[0], now[1] - self._last[1])
        self._last = now

    def wall(self) -> dict[str, float]:
        out = {f"{k}_s": round(v[0], 3) for k, v in self.laps.items()}
        return out | {"total_s": round(self._last[0] - self._start[0], 3)}

    def cpu(self) -> dict[str, float]:
        out = {f"{k}_s": round(v[1], 3) for k, v in self.laps.items()}
        return out | {"total_s": round(self._last[1] - self._start[1], 3)}


@dataclass
class SegmentResult:
    """Paths written and headline numbers of one run."""

    geojson: Path
    zarr: Path
    run_json: Path
    n_nuclei: int
    n_oversized: int
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage


def instance_params(model: Model, mpp: float) -> InstanceParams:
    """The card's thresholds in working pixels at the working pixel size ``mpp``."""
    return params_from_card(model.card, mpp)


def slide_fingerprint(path: Path) -> str:
    """Cheap content identity: size plus sha256 of the first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(size - (1 << 20), 1 << 20))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


@contextmanager
def staging(output_dir: Path):
    """A hidden temporary folder in ``output_dir``, removed on failure (with the folders this run created)."""
    # folders this run creates, deepest first: removed again on failure
    created = [p for p in (output_dir, *output_dir.parents) if not p.exists() and not p.is_symlink()]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / f".wsi-weakseg-tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
    except OSError as exc:
        _remove_empty(created)
        raise OutputError(f"cannot write to output directory {output_dir}: {exc.strerror or exc}; choose another -o") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def _publish_all(moves: dict[Path, Path], tmp: Path) -> None:
    """Move each staged ``src`` to ``dst``, all or nothing: on failure, earlier moves are undone and the
    previous outputs (parked inside ``tmp``, which is removed afterwards) are put back."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for src, dst in moves.items():
            old = None
            if dst.exists() or dst.is_symlink():
                old = tmp / f".previous-{dst.name}"
                os.replace(dst, old)
            done.append((dst, old))
            os.replace(src, dst)
    except BaseException:
        for dst, old in reversed(done):
            try:
                if dst.is_dir() and not dst.is_symlink():
                    shutil.rmtree(dst)
                elif dst.exists() or dst.is_symlink():
                    dst.unlink()
                if old is not None:
                    os.replace(old, dst)
            except OSError as exc:
                log.error("could not restore %s after a failed run: %s", dst, exc)
        raise


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
        Bad input (missing/corrupt slide, missing mpp, bad options, no tissue, unwritable output).
    ProcessingError
        Failure after the inputs were validated.
    """
    from ..io.geojson import GeoJSONWriter
    from ..io.omezarr import OmeZarrWriter
    from ..slide import WorkingView, compute_tissue_mask, open_slide

    opts = options or SegmentOptions()
    clock = StageClock()
    model = model if isinstance(model, Model) else load_model(model)
    card = model.card
    tile = opts.validate(card.tile_size)
    if not card.trained:
        log.warning("model %r is not a trained model: %s", card.name, card.description or "no description")
    slide_path = Path(slide_path)
    slide = open_slide(slide_path, mpp=opts.mpp)
    output_dir = Path(output_dir)
    stem = slide_path.name.split(".")[0] or "slide"
    try:
        view = WorkingView(slide, card.mpp)
        tissue = compute_tissue_mask(slide)
        roi = _load_roi(opts.roi)
        context = card.context_px
        H, W = view.shape
        s, (ox, oy) = view.scale, view.origin
        # Output frame: level-0 pixels relative to the bounds origin (QuPath's OpenSlide server frame).
        fx, fy = ox - slide.bounds[0], oy - slide.bounds[1]

        def box0(y: int, x: int, h: int, w: int) -> tuple[float, float, float, float]:
            return (ox + x * s, oy + y * s, ox + (x + w) * s, oy + (y + h) * s)

        def wanted(y: int, x: int) -> bool:
            b = box0(y - context, x - context, tile + 2 * context, tile + 2 * context)
            if not tissue.region_has_tissue(*b):
                return False
            return roi is None or roi.intersects(_box(b, slide.bounds[:2]))

        def roi_has_tissue(y: int, x: int) -> bool:
            part = roi.intersection(_box(box0(y, x, tile, tile), slide.bounds[:2]))
            if part.is_empty:
                return False
            x0, y0, x1, y1 = part.bounds
            bx, by = slide.bounds[:2]
            return tissue.region_has_tissue(x0 + bx, y0 + by, x1 + bx, y1 + by)

        tiles = [o for o in tile_origins((H, W), tile) if wanted(*o)]
        if roi is not None and not any(roi_has_tissue(y, x) for y, x in tiles):
            tiles = []  # the ROI touches tiles with tissue, but not the tissue itself
        if not tiles:
            where = " inside --roi" if roi is not None else ""
            raise NoTissueError(f"no tissue found in {slide_path}{where}; check the slide (or the ROI file)")
        clock.lap("open_and_tissue")
        log.info("%s: %d x %d working px at %.4f µm/px, %d tiles of %d", slide_path.name, W, H, view.mpp, len(tiles), tile)

        with staging(output_dir) as tmp:
            zpath = tmp / f"{stem}.ome.zarr"
            store = OmeZarrWriter(zpath, (H, W), view.mpp, card.heads, chunk=tile, label_chunk=opts.block_size, name=stem)
            predictor = Predictor(model.net, card, opts.device)
            with progress_bar(len(tiles), "infer tiles", opts.progress) as bar:
                predict_tiles(
                    predictor, view.read, (H, W), store.image, tiles, tile, context,
                    opts.batch_size, opts.num_workers, on_batch=bar.update,
                )
            clock.lap("inference")

            import zarr

            params = instance_params(model, view.mpp)
            keys = zarr.create_array(
                tmp / "keys.zarr", shape=(H, W), chunks=(opts.block_size, opts.block_size), dtype="int64", fill_value=0
            )
            blocks = block_grid((H, W), opts.block_size)
            anchor_filter = None if roi is None else functools.partial(_anchor_in_roi, roi, fx, fy, s)

            fingerprint = slide_fingerprint(slide_path)
            cls = card.classes[0]
            formatter = DetectionFormat(
                fingerprint=fingerprint, model_sha=model.sha256, scale=s, offset=(fx, fy), mpp=view.mpp,
                class_name=cls["name"], color=tuple(cls["color"]),
            )
            with progress_bar(len(blocks), "instances", opts.progress) as bar:
                results = run_blocks(
                    store.image, keys, opts.block_size, params, tmp / "blocks", blocks, opts.num_workers,
                    on_done=lambda: bar.update(1), anchor_filter=anchor_filter, formatter=formatter,
                )
            sorted_keys = np.sort(np.concatenate([r.keys for r in results]))
            n_oversized = int(sum(r.n_oversized for r in results))
            write_label_ids(keys, store.labels["nuclei"], sorted_keys, opts.num_workers)
            clock.lap("instances")

            suffix = ".geojson.gz" if opts.compress else ".geojson"
            gpath = tmp / f"{stem}{suffix}"
            n = 0
            with GeoJSONWriter(gpath, compress=opts.compress) as out:
                for nid, nuc in enumerate(iter_nuclei(tmp / "blocks", blocks), start=1):
                    head, tail = nuc.text
                    out.write_serialized(f"{head}{nid}{tail}")
                    n += 1
            clock.lap("geojson")
            if n != len(sorted_keys):
                raise ProcessingError(f"internal error: {n} polygons for {len(sorted_keys)} labels")
            if n_oversized:
                log.warning(
                    "%s: %d nucle%s reach the model's size limit (max_nucleus_um = %g µm) and were cut there; "
                    "inspect them (large or merged nuclei) or use a model card with a larger max_nucleus_um",
                    slide_path.name, n_oversized, "us" if n_oversized == 1 else "i", card.max_nucleus_um,
                )

            store.finalize()
            shutil.rmtree(tmp / "keys.zarr")
            shutil.rmtree(tmp / "blocks")
            clock.lap("pyramid")

            run = {
                "wsi_weakseg_version": __version__,
                "slide": {"path": str(slide_path.resolve()), "fingerprint": fingerprint, "vendor": slide.vendor,
                          "mpp": slide.mpp, "mpp_source": slide.mpp_source, "bounds": list(slide.bounds)},
                "coordinates": {"unit": "level-0 pixel", "origin_level0": list(slide.bounds[:2]),
                                "note": "relative to the slide's bounds origin, as QuPath's OpenSlide server shows it"},
                "model": {"name": card.name, "path": str(model.path) if model.path else None,
                          "sha256": model.sha256, "trained": card.trained},
                "working": {"mpp": view.mpp, "scale": s, "level": view.level, "resampled": view.resampled,
                            "shape": [H, W]},
                "config": {**asdict(opts), "tile_size": tile, "context_px": context,
                           "halo_px": params.halo, "instance_params": asdict(params)},
                "device": str(predictor.device),
                "versions": _versions(),
                "tiles": {"total": len(tile_origins((H, W), tile)), "processed": len(tiles)},
                "tissue": {"fraction": tissue.fraction, "area_mm2": tissue.area_um2(slide.mpp) / 1e6},
                "nuclei": n,
                "nuclei_oversized": n_oversized,
                "timings_s": clock.wall(),
                "cpu_s": clock.cpu(),
            }
            rpath = tmp / f"{stem}.run.json"
            rpath.write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n")
            final = {p: output_dir / p.name for p in (zpath, gpath, rpath)}
            _publish_all(final, tmp)
    except WsiWeaksegError:
        raise
    except OSError as exc:
        raise OutputError(f"writing outputs to {output_dir} failed: {exc}") from exc
    finally:
        slide.close()
    return SegmentResult(
        geojson=final[gpath], zarr=final[zpath], run_json=final[rpath], n_nuclei=n,
        n_oversized=n_oversized, timings=clock.wall(),
    )


def _anchor_in_roi(roi, fx: float, fy: float, s: float, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether working-pixel anchors (their centres, in the output frame) lie inside the ROI."""
    import shapely

    return shapely.contains_xy(roi, fx + (cols + 0.5) * s, fy + (rows + 0.5) * s)


def _box(b: tuple[float, float, float, float], origin: tuple[int, int]):
    from shapely.geometry import box

    return box(b[0] - origin[0], b[1] - origin[1], b[2] - origin[0], b[3] - origin[1])


def _load_roi(path: str | None):
    if path is None:
        return None
    from ..io.geojson import read_roi

    return read_roi(path)


def _versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "numpy", "scipy", "scikit-image", "zarr", "dask", "openslide-python", "openslide-bin", "shapely"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
