#!/usr/bin/env python
"""Instances + GeoJSON throughput per CPU core, on the maps of the model users get.

The script

1. tiles MoNuSeg training images into a ``grid x grid`` mosaic (as ``segment_throughput.py``), brings it
   to the model card's µm/px and predicts its maps once with ``--model`` (default: the packaged default
   model); the maps are cached in ``--workdir`` so repeats time only post-processing;
2. runs ``segment``'s own stages on them in this process: :func:`extract_instances` (blocks, label keys,
   consecutive ids into a zarr label array) with ``--num-workers`` threads, then :func:`write_geojson`;
3. prints wall and CPU seconds per stage and **working Mpx/s per CPU core** (working pixels / CPU-s) for
   instances + GeoJSON, the figure issue 13 targets (>= 10, aim 20), and bytes and vertices per nucleus
   for each ``--outlines`` mode (``pixel,smooth`` runs both back to back); ``--json`` saves the numbers;
   ``--profile N`` prints the N most expensive functions (cProfile, one worker).

Data: ``$WSI_WEAKSEG_DATA`` or ``../shared/data`` next to the repository (never copied into it).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from segment_throughput import build_mosaic, cpu_description, cpu_s, peak_rss_mib  # noqa: E402


def mosaic_maps(model, grid: int, workdir: Path):
    """The model's maps of the mosaic at the card's µm/px (cached as ``maps-<model>-<grid>.npy``)."""
    import numpy as np
    from PIL import Image

    from wsi_weakseg.engine.whole import as_predictor, predict_maps

    cache = workdir / f"maps-{model.card.name}-{grid}.npy"
    if cache.exists():
        return np.load(cache)
    rgb = build_mosaic(grid)
    side = int(round(rgb.shape[0] * 0.25 / model.card.mpp))
    rgb = np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.BOX)) if side != rgb.shape[0] else rgb
    t = time.perf_counter()
    maps = predict_maps(as_predictor(model), rgb)
    logging.info("maps predicted in %.1f s", time.perf_counter() - t)
    np.save(cache, maps)
    return maps


def run_stages(maps, model, block: int, workers: int, out: Path, outlines: str = "pixel") -> dict:
    """Time ``extract_instances`` and ``write_geojson`` on in-memory maps; return the numbers."""
    import zarr

    from wsi_weakseg.engine.features import DetectionFormat
    from wsi_weakseg.engine.segment import SegmentOptions, extract_instances, instance_params, write_geojson

    params = instance_params(model, model.card.mpp)
    cls = model.card.classes[0]
    fmt = DetectionFormat(fingerprint="bench", model_sha=model.sha256, scale=2.0, offset=(0.0, 0.0),
                          mpp=model.card.mpp, class_name=cls["name"], color=tuple(cls["color"]))
    opts = SegmentOptions(block_size=block, num_workers=workers, progress=False, outlines=outlines)
    labels = zarr.create_array(out / "labels.zarr", shape=maps.shape[1:], chunks=(block, block), dtype="uint32")
    t0, c0 = time.perf_counter(), cpu_s()
    inst = extract_instances(maps, labels, out, params, opts, None, fmt)
    t1, c1 = time.perf_counter(), cpu_s()
    n = write_geojson(out / "nuclei.geojson", inst, False)
    t2, c2 = time.perf_counter(), cpu_s()
    mpx = maps.shape[1] * maps.shape[2] / 1e6
    from wsi_weakseg.io.geojson import read_features

    rings = [r for f in read_features(out / "nuclei.geojson") for r in f["geometry"]["coordinates"]]
    return {
        "outlines": outlines, "vertices_per_nucleus": sum(len(r) - 1 for r in rings) / max(n, 1),
        "working_mpx": mpx, "nuclei": n, "block": block, "workers": workers, "halo_px": params.halo,
        "instances_wall_s": t1 - t0, "instances_cpu_s": c1 - c0,
        "geojson_wall_s": t2 - t1, "geojson_cpu_s": c2 - c1,
        "mpx_per_cpu_s": mpx / ((c2 - c0) or float("nan")), "mpx_per_wall_s": mpx / (t2 - t0),
        "geojson_bytes": (out / "nuclei.geojson").stat().st_size,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or packaged name (default: the default model)")
    p.add_argument("--grid", type=int, default=4, help="mosaic of grid x grid MoNuSeg images (default 4)")
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="best of N post-processing runs")
    p.add_argument("--workdir", type=Path, default=None, help="keep the cached maps here")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    p.add_argument("--outlines", default="pixel",
                   help="outline mode(s), comma-separated: each repeat runs them back to back (e.g. pixel,smooth)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from wsi_weakseg.model.card import DEFAULT_MODEL, load_model

    torch.set_num_threads(2)
    model = load_model(args.model or DEFAULT_MODEL)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="inst-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    maps = mosaic_maps(model, args.grid, workdir)
    modes = args.outlines.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for i in range(args.repeat):
        for mode in modes:  # back to back, so a competing load weighs on every mode alike
            out = Path(tempfile.mkdtemp(prefix=f"run{i}-{mode}-", dir=workdir))
            if args.profile:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
            runs[mode].append(run_stages(maps, model, args.block_size, args.num_workers, out, mode))
            if args.profile:
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
            shutil.rmtree(out)
    report = {}
    for mode in modes:
        best = max(runs[mode], key=lambda r: r["mpx_per_cpu_s"])
        best.update(model=model.card.name, cpu=cpu_description(), peak_rss_mib=peak_rss_mib(),
                    all_mpx_per_cpu_s=[round(r["mpx_per_cpu_s"], 3) for r in runs[mode]])
        report[mode] = best
        print(f"model {best['model']}, {mode} outlines: {best['working_mpx']:.2f} working Mpx, {best['nuclei']} nuclei, "
              f"block {best['block']} (halo {best['halo_px']} px), {best['workers']} worker(s)")
        print(f"  instances   wall {best['instances_wall_s']:.2f} s   CPU {best['instances_cpu_s']:.2f} s")
        print(f"  geojson     wall {best['geojson_wall_s']:.2f} s   CPU {best['geojson_cpu_s']:.2f} s   "
              f"{best['geojson_bytes'] / best['nuclei']:.0f} B/nucleus, {best['vertices_per_nucleus']:.1f} vertices/nucleus")
        print(f"  instances + GeoJSON: {best['mpx_per_cpu_s']:.2f} working Mpx/s per CPU core "
              f"({best['mpx_per_wall_s']:.2f} Mpx/s wall; target >= 10)")
    if args.json:
        args.json.write_text(json.dumps(report if len(modes) > 1 else report[modes[0]], indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
