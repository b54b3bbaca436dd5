#!/usr/bin/env python
"""Cohort throughput: slides per minute with 1 and 2 LocalCluster workers, against direct ``segment`` calls.

The script

1. writes ``--slides`` small synthetic slides (:func:`wsi_weakseg.demo.synthetic_he`, ``--size`` pixels at
   0.5 µm/px, a 2-level tiled TIFF each);
2. **direct**: segments them one after another with :func:`wsi_weakseg.engine.segment.segment` in this
   process (model loaded once, one warm-up slide first, torch on all cores): the work itself;
3. **cohort, N workers** for N in ``--workers`` (default 1 2): :func:`wsi_weakseg.cohort.run_cohort` on a
   fresh LocalCluster of N worker processes (torch threads = cores / N) into a fresh output folder, timed
   from the call to its return, and the cluster start-up alone (LocalCluster + Client + workers ready, then
   closed) timed apart;
4. prints slides/min for each and the per-slide overhead of the cohort with 1 worker,
   ``(cohort wall - cluster start-up - direct wall) / slides`` (what a slide costs on top of its own work),
   split into scheduling, ``(cohort wall - start-up - sum of the ledger's task durations) / slides``
   (submission, result transfer, ledger), and the rest, spent inside the tasks (cold imports and the model
   load once per worker process, done-manifest); with ``--json [PATH]`` every number as JSON.

Run it on an idle machine: the workers and the direct run share its cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_throughput import cpu_description  # noqa: E402 - sibling script, same folder


def write_slides(folder: Path, n: int, size: int) -> list[Path]:
    from wsi_weakseg.demo import synthetic_he
    from wsi_weakseg.slide.testing import write_pyramid_tiff

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rgb, _ = synthetic_he((size, size), mpp=0.5, seed=i)
        paths.append(write_pyramid_tiff(folder / f"s{i:03d}.tiff", rgb, 0.5, levels=2, tile=256))
    return paths


def time_direct(paths: list[Path], out: Path, model) -> float:
    from wsi_weakseg.engine.segment import SegmentOptions, segment

    opts = SegmentOptions(progress=False)
    segment(paths[0], out / "warmup", model, opts)
    start = time.perf_counter()
    for p in paths:
        segment(p, out / p.stem, model, opts)
    return time.perf_counter() - start


def time_startup(n_workers: int) -> float:
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.wait_for_workers(n_workers)
        return time.perf_counter() - start


def time_cohort(folder: Path, out: Path, model: str, n_workers: int) -> tuple[float, dict]:
    from wsi_weakseg.cohort import CohortOptions, find_slides, run_cohort
    from wsi_weakseg.engine.segment import SegmentOptions

    jobs = find_slides(folder)
    start = time.perf_counter()
    summary = run_cohort(jobs, out, model, SegmentOptions(progress=False),
                         CohortOptions(n_workers=n_workers, progress=False))
    wall = time.perf_counter() - start
    if summary.exit_code:
        raise SystemExit(f"cohort failed:\n{summary.table()}")
    return wall, sum(r["duration_s"] for r in summary.rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024, help="slide edge in pixels at 0.5 µm/px")
    ap.add_argument("--model", default="hematoxylin-baseline", help="packaged model name or folder")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to stdout without PATH)")
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)

    import torch

    from wsi_weakseg.model.card import load_model

    with tempfile.TemporaryDirectory(prefix="cohort-bench-") as tmp:
        tmp = Path(tmp)
        paths = write_slides(tmp / "slides", args.slides, args.size)
        direct = time_direct(paths, tmp / "direct", load_model(args.model))
        rows = {}
        for n in args.workers:
            startup = time_startup(n)
            wall, task_s = time_cohort(tmp / "slides", tmp / f"cohort-{n}", args.model, n)
            rows[n] = {"wall_s": round(wall, 2), "startup_s": round(startup, 2), "task_s": round(task_s, 2),
                       "slides_per_min": round(60 * args.slides / wall, 2),
                       "slides_per_min_excl_startup": round(60 * args.slides / (wall - startup), 2)}

    n = len(paths)
    result = {
        "machine": cpu_description(), "torch": torch.__version__, "model": args.model,
        "slides": n, "slide_px": args.size,
        "direct": {"wall_s": round(direct, 2), "slides_per_min": round(60 * n / direct, 2)},
        "cohort": rows,
    }
    if 1 in rows:
        result["overhead_per_slide_s"] = round((rows[1]["wall_s"] - rows[1]["startup_s"] - direct) / n, 3)
        result["scheduling_per_slide_s"] = round((rows[1]["wall_s"] - rows[1]["startup_s"] - rows[1]["task_s"]) / n, 3)
    print(f"machine   {result['machine']}, torch {torch.__version__}, model {args.model}")
    print(f"slides    {n} of {args.size}x{args.size} px at 0.5 µm/px")
    print(f"direct    {direct:7.1f} s   {60 * n / direct:6.2f} slides/min   (segment() in one process)")
    for k, r in rows.items():
        print(f"cohort {k}w {r['wall_s']:7.1f} s   {r['slides_per_min']:6.2f} slides/min   "
              f"(start-up {r['startup_s']:.1f} s; {r['slides_per_min_excl_startup']:.2f} slides/min without it)")
    if 1 in rows and 2 in rows:
        print(f"ratio     2 workers / 1 worker = {rows[1]['wall_s'] / rows[2]['wall_s']:.2f}x; "
              f"cohort 1w / direct (excl. start-up) = {(rows[1]['wall_s'] - rows[1]['startup_s']) / direct:.2f}")
    if "overhead_per_slide_s" in result:
        print(f"overhead  {result['overhead_per_slide_s']:.3f} s per slide (cohort with 1 worker, start-up excluded, "
              "minus direct), of which scheduling "
              f"{result['scheduling_per_slide_s']:.3f} s (wall outside the tasks; the rest is inside them: "
              "cold imports and model load once per worker, done-manifest)")
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
