#!/usr/bin/env python
"""End-to-end ``segment()`` throughput versus model-only forward throughput on the same tiles.

The script

1. tiles MoNuSeg training images (1000x1000 at ~0.25 µm/px) into a ``grid x grid`` mosaic
   (default 4x4 = 4000x4000 = 16 Mpx at level 0) and writes it as a 3-level pyramidal tiled JPEG TIFF;
2. runs ``wsi_weakseg.segment()`` on it end to end (phase "e2e", own subprocess) and reads the stage
   wall times from ``run.json``; CPU seconds per stage are measured around the same stage boundaries;
3. runs the model alone (phase "model", own subprocess) on exactly the same tissue tiles (same working
   view, tile size, context, batch size, torch threads): tiles are pre-loaded into memory with
   ``read_tile(view.read, ...)``, one batch is run as warm-up, then only ``Predictor.__call__`` over all
   batches is timed;
4. prints a table, and optionally saves every number as JSON (``--json``).

Each phase runs in its own child process so that its peak RSS (``ru_maxrss``, process-wide) is its own
and not inflated by the mosaic building or by the other phase.

Data: ``$WSI_WEAKSEG_DATA`` or ``../shared/data`` relative to the repository root (never copied into the repo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only; the functions import numpy themselves when they run
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("open_and_tissue", "inference", "instances", "geojson", "pictures", "pyramid")

EPILOG = """\
timing guide (2-core x86_64 CPU, no GPU, shared with other jobs): the untrained full-width
ResNet34-UNet ran at ~0.1-0.13 working Mpx/s model-only (16 tiles of 512 px + 64 px context in 31-42 s); at
the default --mpp-model 0.5 the 4x4 mosaic is 2000x2000 = 4 Mpx of model work and the whole script
took ~2-2.5 minutes per repeat (an idle machine should be faster).
--mpp-model 0.25 runs the model at full resolution (4000x4000 = 16 Mpx, ~4x longer); --grid 2 uses a
2x2 mosaic (4x shorter). --model hematoxylin-baseline benchmarks the cheap, parameter-free stub (seconds).

ratio = end-to-end Mpx/s / model-only Mpx/s: the fraction of the pure forward-pass speed that the full
pipeline (reading, tissue detection, zarr writes, instance extraction, GeoJSON, pyramids) keeps.
Target: >= 0.85.
"""


# ----------------------------------------------------------------------------------------------------
# helpers


def data_root() -> Path:
    env = os.environ.get("WSI_WEAKSEG_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


def cpu_s() -> float:
    """User + system CPU seconds of this process (all threads) and of its waited-for children."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB): ``VmHWM``, the high-water mark of its own address space.

    Not ``ru_maxrss``: Linux carries that across ``exec`` from the parent (the forking benchmark driver, which
    held the mosaic), so a child would report the driver's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_description() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical cores, {platform.machine()})"


# ----------------------------------------------------------------------------------------------------
# setup (parent process)


def build_mosaic(grid: int) -> np.ndarray:
    import numpy as np
    from PIL import Image

    folder = data_root() / "monuseg-train" / "images"
    files = sorted(folder.glob("*.png"))
    if not files:
        sys.exit(
            f"segment_throughput: no MoNuSeg images in {folder}.\n"
            "Set WSI_WEAKSEG_DATA to the shared data folder (the one holding monuseg-train/), "
            "or place it at ../shared/data next to the repository."
        )
    tiles = []
    for i in range(grid * grid):  # beyond the 30 images, reuse them mirrored (a larger mosaic, same density)
        im = np.asarray(Image.open(files[i % len(files)]).convert("RGB"))[:1000, :1000]
        tiles.append(im if (i // len(files)) % 2 == 0 else im[:, ::-1])
    side = min(min(t.shape[0], t.shape[1]) for t in tiles)
    rows = [np.concatenate([t[:side, :side] for t in tiles[r * grid : (r + 1) * grid]], axis=1) for r in range(grid)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def make_resnet_model(folder: Path, mpp: float, seed: int, fit_steps: int, skip: int) -> Path:
    """Full-width ResNet34-UNet, fitted for ``fit_steps`` to MoNuSeg masks + centres of images NOT in the
    mosaic (so its maps have a realistic nucleus density; an untrained net floods everything)."""
    import numpy as np
    import torch
    from PIL import Image

    from wsi_weakseg.evaluate import read_label_map
    from wsi_weakseg.model.card import ModelCard, save_model
    from wsi_weakseg.model.fit import fit_dense
    from wsi_weakseg.model.resnet_unet import ResNet34UNet
    from wsi_weakseg.weak import centre_heatmap, label_centroids

    torch.manual_seed(seed)
    net = ResNet34UNet(out_channels=2)  # full width 64 = the real ResNet34 encoder
    card = ModelCard(
        name="bench-resnet34",
        architecture="resnet34-unet",
        mpp=mpp,
        tile_size=512,
        context_px=64,
        trained=False,
        description=f"ResNet34-UNet fitted {fit_steps} steps (seed {seed}), for throughput benchmarks only",
    )
    if fit_steps:
        step = max(1, round(mpp / 0.25))
        files = sorted((data_root() / "monuseg-train" / "images").glob("*.png"))[skip:]
        images, targets = [], []
        for f in files[:6]:
            images.append(np.asarray(Image.open(f).convert("RGB"))[::step, ::step].copy())
            lab = read_label_map(f.parent.parent / "labels" / f.name)[0][::step, ::step].astype(np.int64)
            targets.append(np.stack([(lab > 0).astype(np.float32),
                                     centre_heatmap(label_centroids(lab), lab.shape, 2.0 * 0.5 / mpp)]))
        t0 = time.perf_counter()
        fit_dense(net, images, targets, card.normalization, steps=fit_steps, crop=128, seed=seed)
        print(f"fitted the benchmark net for {fit_steps} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return save_model(folder, card, net)


# ----------------------------------------------------------------------------------------------------
# child phases


def load_for_run(cfg: dict):
    import dataclasses

    import torch

    from wsi_weakseg.model.card import load_model

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    model = load_model(cfg["model"])
    if cfg["mpp_model"] is not None and abs(model.card.mpp - cfg["mpp_model"]) > 1e-12:
        model.card = dataclasses.replace(model.card, mpp=cfg["mpp_model"])
    return model


def phase_e2e(cfg: dict) -> dict:
    import torch

    from wsi_weakseg.engine.segment import SegmentOptions, segment

    model = load_for_run(cfg)
    rss_before = current_rss_mib()
    opts = SegmentOptions(
        tile_size=cfg["tile_size"], batch_size=cfg["batch_size"], num_workers=cfg["num_workers"],
        device=cfg["device"], progress=False,
    )
    out_dir = Path(cfg["workdir"]) / "e2e-out"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    t0, c0 = time.perf_counter(), cpu_s()
    res = segment(cfg["slide"], out_dir, model, opts)
    wall, cpu_total = time.perf_counter() - t0, cpu_s() - c0
    run = json.loads(res.run_json.read_text())
    return {
        "wall_s": wall,
        "cpu_s": cpu_total,
        "timings_s": run["timings_s"],
        "stage_cpu_s": {k.removesuffix("_s"): v for k, v in run["cpu_s"].items() if k != "total_s"},
        "tiles": run["tiles"],
        "working_shape": run["working"]["shape"],
        "working_mpp": run["working"]["mpp"],
        "resampled": run["working"]["resampled"],
        "tile_size": run["config"]["tile_size"],
        "context_px": run["config"]["context_px"],
        "nuclei": run["nuclei"],
        "device": run["device"],
        "torch_threads": torch.get_num_threads(),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "model_name": run["model"]["name"],
        "model_trained": run["model"]["trained"],
    }


def tissue_tiles(slide, view, tissue, tile: int, context: int) -> list[tuple[int, int]]:
    """The tiles segment() processes (same rule: core + context box touches tissue; no ROI)."""
    from wsi_weakseg.engine.inference import tile_origins

    s, (ox, oy) = view.scale, view.origin
    out = []
    for y, x in tile_origins(view.shape, tile):
        y0, x0, n = y - context, x - context, tile + 2 * context
        if tissue.region_has_tissue(ox + x0 * s, oy + y0 * s, ox + (x0 + n) * s, oy + (y0 + n) * s):
            out.append((y, x))
    return out


def phase_model(cfg: dict) -> dict:
    import numpy as np
    import torch

    from wsi_weakseg.engine.inference import Predictor, read_tile
    from wsi_weakseg.slide import WorkingView, compute_tissue_mask, open_slide

    model = load_for_run(cfg)
    card = model.card
    tile = cfg["tile_size"] or card.tile_size
    context = card.context_px
    slide = open_slide(Path(cfg["slide"]))
    try:
        view = WorkingView(slide, card.mpp)
        tissue = compute_tissue_mask(slide)
        origins = tissue_tiles(slide, view, tissue, tile, context)
        H, W = view.shape
        t0 = time.perf_counter()
        arrays = [read_tile(view.read, (H, W), y, x, tile, context) for y, x in origins]
        t_read = time.perf_counter() - t0
    finally:
        slide.close()
    bs = cfg["batch_size"]
    batches = [np.stack(arrays[i : i + bs]) for i in range(0, len(arrays), bs)]
    predictor = Predictor(model.net, card, cfg["device"])
    rss_before = current_rss_mib()
    predictor(batches[0], crop=context)  # warm-up, not timed
    wall = cpu = 0.0
    for b in batches:
        w0, c0 = time.perf_counter(), cpu_s()
        predictor(b, crop=context)
        wall += time.perf_counter() - w0
        cpu += cpu_s() - c0
    core_px = sum(min(tile, H - y) * min(tile, W - x) for y, x in origins)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "tiles": len(origins),
        "batches": len(batches),
        "tile_read_s": t_read,
        "core_px": core_px,
        "input_px": len(origins) * (tile + 2 * context) ** 2,
        "device": str(predictor.device),
        "torch_threads": torch.get_num_threads(),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_child(phase: str, cfg_path: Path, verbose: bool) -> dict:
    result = cfg_path.with_name(f"result-{phase}.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_phase", phase, "--_config", str(cfg_path),
           "--_result", str(result)]
    if verbose:
        cmd.append("-v")
    proc = subprocess.run(cmd)
    if proc.returncode:
        sys.exit(f"segment_throughput: phase {phase!r} failed (exit {proc.returncode})")
    return json.loads(result.read_text())


# ----------------------------------------------------------------------------------------------------
# report


def summarise(cfg: dict, e2e: dict, mo: dict, setup: dict) -> dict:
    H, W = e2e["working_shape"]
    tile = e2e["tile_size"]
    mpx = mo["core_px"] / 1e6
    e2e_wall = e2e["timings_s"].get("total_s", e2e["wall_s"])
    e2e_rate = mpx / e2e_wall
    mo_rate = mpx / mo["wall_s"]
    if e2e["tiles"]["processed"] != mo["tiles"]:
        print(f"WARNING: segment() processed {e2e['tiles']['processed']} tiles, model-only {mo['tiles']}", file=sys.stderr)
    return {
        "machine": cpu_description(),
        "python": sys.version.split()[0],
        "model": e2e["model_name"],
        "model_trained": e2e["model_trained"],
        "slide_level0_px": setup["level0_shape"],
        "slide_mpp": 0.25,
        "grid": cfg["grid"],
        "working_mpp": e2e["working_mpp"],
        "working_shape": [H, W],
        "resampled": e2e["resampled"],
        "tile_size": tile,
        "context_px": e2e["context_px"],
        "batch_size": cfg["batch_size"],
        "num_workers": cfg["num_workers"],
        "tiles_processed": mo["tiles"],
        "tissue_mpx": mpx,
        "model_input_mpx": mo["input_px"] / 1e6,
        "e2e_wall_s": e2e_wall,
        "e2e_cpu_s": e2e["cpu_s"],
        "e2e_mpx_per_s": e2e_rate,
        "model_only_wall_s": mo["wall_s"],
        "model_only_cpu_s": mo["cpu_s"],
        "model_only_mpx_per_s": mo_rate,
        "ratio_e2e_over_model": e2e_rate / mo_rate,
        "cpu_ratio_e2e_over_model": mo["cpu_s"] / e2e["cpu_s"],
        "repeat": setup.get("repeat", 1),
        "e2e_wall_all_s": setup.get("e2e_wall_all_s"),
        "model_only_wall_all_s": setup.get("model_only_wall_all_s"),
        "ratio_inference_stage_over_model": (mo["wall_s"] / e2e["timings_s"]["inference_s"]
                                             if e2e["timings_s"].get("inference_s") else None),
        "loadavg_1min": setup.get("loadavg"),
        "stage_wall_s": {k: e2e["timings_s"].get(f"{k}_s") for k in STAGES},
        "stage_cpu_s": e2e["stage_cpu_s"],
        "e2e_peak_rss_mib": e2e["peak_rss_mib"],
        "e2e_rss_before_mib": e2e["rss_before_mib"],
        "model_only_peak_rss_mib": mo["peak_rss_mib"],
        "nuclei": e2e["nuclei"],
        "device": e2e["device"],
        "torch_threads": e2e["torch_threads"],
        "model_only_torch_threads": mo["torch_threads"],
        "setup_s": setup,
    }


def print_table(r: dict) -> None:
    def f(v, fmt="{:.2f}"):
        return "n/a" if v is None else fmt.format(v)

    H, W = r["working_shape"]
    lines = [
        f"machine                      {r['machine']}",
        f"device / torch threads       {r['device']} / {r['torch_threads']}",
        f"model                        {r['model']}{'' if r['model_trained'] else ' (UNTRAINED)'}",
        f"slide                        {r['slide_level0_px'][1]}x{r['slide_level0_px'][0]} px at 0.25 µm/px "
        f"({r['grid']}x{r['grid']} MoNuSeg mosaic, JPEG pyramidal TIFF)",
        f"working                      {W}x{H} px at {r['working_mpp']:.3g} µm/px"
        f"{' (resampled)' if r['resampled'] else ' (pyramid level, no resampling)'}",
        f"tiles                        {r['tiles_processed']} of {r['tile_size']} px + {r['context_px']} px context, "
        f"batch {r['batch_size']}, {r['num_workers']} workers",
        f"tissue Mpx (working px)      {r['tissue_mpx']:.3f}   (model input incl. context: {r['model_input_mpx']:.3f} Mpx)",
        f"end-to-end wall s            {r['e2e_wall_s']:.2f}   (CPU {r['e2e_cpu_s']:.2f} s)",
        f"end-to-end Mpx/s             {r['e2e_mpx_per_s']:.3f}",
        f"model-only wall s            {r['model_only_wall_s']:.2f}   (CPU {r['model_only_cpu_s']:.2f} s)",
        f"model-only Mpx/s             {r['model_only_mpx_per_s']:.3f}",
        f"ratio e2e / model-only       {r['ratio_e2e_over_model']:.3f}   (target >= 0.85)",
        f"CPU ratio e2e / model-only   {r['cpu_ratio_e2e_over_model']:.3f}   "
        "(model-only CPU s / end-to-end CPU s; less sensitive to other load)",
        f"ratio inference stage only   {f(r['ratio_inference_stage_over_model'], '{:.3f}')}   "
        "(model-only wall / segment()'s inference wall)",
        f"runs (best of)               {r['repeat']}: e2e wall {r['e2e_wall_all_s']} s, "
        f"model-only wall {r['model_only_wall_all_s']} s",
        f"load average (1 min)         {r['loadavg_1min']}   (start, then after each phase; "
        f"{os.cpu_count()} cores)",
        "stage                        wall s     CPU s",
    ]
    for k in STAGES:
        lines.append(f"  {k:<26} {f(r['stage_wall_s'][k]):>7}   {f(r['stage_cpu_s'][k]):>7}")
    lines += [
        f"peak RSS MiB                 e2e {r['e2e_peak_rss_mib']:.0f} (before run {r['e2e_rss_before_mib']:.0f}), "
        f"model-only {r['model_only_peak_rss_mib']:.0f}",
        f"nuclei found                 {r['nuclei']}",
    ]
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------------
# main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=None,
                   help="model folder or packaged name (e.g. hematoxylin-baseline); default: the packaged default "
                        "model (what users get); 'stand-in': a seeded full-width ResNet34-UNet created in the work dir")
    p.add_argument("--mpp-model", type=float, default=None,
                   help="working µm/px of the model (default: 0.5 for the stand-in, else the card's); "
                        "0.25 = full resolution, 4x the pixels")
    p.add_argument("--fit-steps", type=int, default=80,
                   help="fit the created ResNet this many steps to MoNuSeg masks not in the mosaic (default 80; 0 = untrained)")
    p.add_argument("--grid", type=int, default=4, help="mosaic of grid x grid MoNuSeg 1000x1000 images (default 4 -> 16 Mpx)")
    p.add_argument("--tile-size", type=int, default=None, help="tile core in working px (default: the card's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in both phases (default: torch's)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run both phases N times (alternating) and report the fastest of each (default 1); "
                        "use >= 2 on a shared machine")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the created ResNet's weights")
    p.add_argument("--workdir", default=None, help="keep the mosaic, model and outputs here (default: a temp dir, removed)")
    p.add_argument("--json", default=None, help="save all numbers to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true", help="show wsi_weakseg's log messages")
    p.add_argument("--_phase", choices=("e2e", "model"), help=argparse.SUPPRESS)
    p.add_argument("--_config", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    import logging

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if args._phase:
        cfg = json.loads(Path(args._config).read_text())
        res = (phase_e2e if args._phase == "e2e" else phase_model)(cfg)
        Path(args._result).write_text(json.dumps(res, indent=2))
        return 0

    if args.grid < 1 or args.repeat < 1:
        sys.exit("--grid and --repeat must be >= 1")
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="wsi-weakseg-bench-")
        work = Path(tmp)
    try:
        from wsi_weakseg.slide.testing import write_pyramid_tiff

        setup: dict = {}
        t0 = time.perf_counter()
        rgb = build_mosaic(args.grid)
        slide = work / f"monuseg-mosaic-{args.grid}x{args.grid}.tiff"
        write_pyramid_tiff(slide, rgb, 0.25, levels=3, tile=256, compression="jpeg")
        setup["level0_shape"] = list(rgb.shape[:2])
        setup["mosaic_s"] = time.perf_counter() - t0
        del rgb
        from wsi_weakseg.model.card import DEFAULT_MODEL

        model = args.model or DEFAULT_MODEL
        mpp_model = args.mpp_model
        if model == "stand-in":
            t0 = time.perf_counter()
            model = str(make_resnet_model(work / "bench-resnet34", mpp_model or 0.5, args.seed, args.fit_steps,
                                          args.grid * args.grid))
            setup["model_s"] = time.perf_counter() - t0
        cfg = {
            "slide": str(slide), "model": model, "mpp_model": mpp_model, "grid": args.grid,
            "tile_size": args.tile_size, "batch_size": args.batch_size, "num_workers": args.num_workers,
            "device": args.device, "threads": args.threads, "workdir": str(work),
        }
        cfg_path = work / "bench-config.json"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        print(f"slide {slide.name} written ({setup['mosaic_s']:.1f} s); running segment() ...", flush=True)
        setup["loadavg"] = [round(os.getloadavg()[0], 2)]
        if setup["loadavg"][0] > 0.5 * (os.cpu_count() or 1):
            print(f"note: 1-min load average is {setup['loadavg'][0]} on {os.cpu_count()} cores; "
                  "other processes will skew the timings", flush=True)
        e2e_runs, mo_runs = [], []
        for i in range(args.repeat):
            tag = f" (repeat {i + 1}/{args.repeat})" if args.repeat > 1 else ""
            if i:
                print(f"running segment(){tag} ...", flush=True)
            e2e_runs.append(run_child("e2e", cfg_path, args.verbose))
            setup["loadavg"].append(round(os.getloadavg()[0], 2))
            print(f"running model-only forward passes on the same tiles{tag} ...", flush=True)
            mo_runs.append(run_child("model", cfg_path, args.verbose))
            setup["loadavg"].append(round(os.getloadavg()[0], 2))
        # best of N: other load only ever adds time
        e2e = min(e2e_runs, key=lambda r: r["timings_s"].get("total_s", r["wall_s"]))
        mo = min(mo_runs, key=lambda r: r["wall_s"])
        setup["repeat"] = args.repeat
        setup["e2e_wall_all_s"] = [round(r["timings_s"].get("total_s", r["wall_s"]), 2) for r in e2e_runs]
        setup["model_only_wall_all_s"] = [round(r["wall_s"], 2) for r in mo_runs]
        report = summarise(cfg, e2e, mo, setup)
        print()
        print_table(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            print(f"\nnumbers saved to {args.json}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
