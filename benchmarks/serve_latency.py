#!/usr/bin/env python
"""Serve overhead: job latency minus the ``segment`` time of the same region, and ``/health`` requests/s.

The script

1. writes a synthetic ``--size``² slide (0.5 µm/px, tiled TIFF) into a temporary root;
2. starts ``wsi-weakseg serve --port 0`` on 127.0.0.1 (a LocalCluster of 1 worker, or ``--in-process``) and
   runs one warm-up job (worker imports, model load, compiled kernels);
3. **job latency**: ``--repeats`` times, POST ``/v1/segment`` for a ``--region``² box, poll its status every
   10 ms until done, GET the result: wall time from the POST to the last byte;
4. **segment time**: the same region through :func:`wsi_weakseg.engine.segment.segment` in this process
   (warm: one call first), ``--repeats`` times;
5. prints medians, overhead = median latency − median segment time, and ``/health`` requests per second from
   one keep-alive client for ``--seconds`` (sequential) and from 8 threads; ``--json`` prints every number.

Both 3 and 4 share the machine's cores; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

MODEL = "hematoxylin-baseline"


def start(root: Path, state: Path, token_file: Path, in_process: bool) -> tuple[subprocess.Popen, str]:
    import wsi_weakseg

    env = {**os.environ, "PYTHONPATH": str(Path(wsi_weakseg.__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "wsi_weakseg.cli", "serve", "--root", str(root), "--port", "0", "--state-dir",
           str(state), "--token-file", str(token_file), *(["--in-process"] if in_process else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    return proc, json.loads(proc.stdout.readline())["url"]


def run_job(c: httpx.Client, box: list[int]) -> float:
    t0 = time.perf_counter()
    job = c.post("/v1/segment", json={"slide": "bench.tiff", "roi": box, "model": MODEL}).json()["job"]
    for _ in range(60_000):
        state = c.get(f"/v1/jobs/{job}").json()["state"]
        if state in ("done", "failed", "cancelled"):
            break
        time.sleep(0.01)
    assert state == "done", state
    c.get(f"/v1/jobs/{job}/result").raise_for_status()
    return time.perf_counter() - t0


def health_rps(url: str, seconds: float, threads: int) -> float:
    counts = [0] * threads
    end = time.perf_counter() + seconds

    def loop(i: int) -> None:
        with httpx.Client(base_url=url) as c:
            while time.perf_counter() < end:
                c.get("/health").raise_for_status()
                counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--region", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--in-process", action="store_true", help="jobs in server threads, not on a LocalCluster")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    from wsi_weakseg.demo import synthetic_he
    from wsi_weakseg.engine.segment import SegmentOptions, segment
    from wsi_weakseg.serve.roi import write_roi
    from wsi_weakseg.slide.testing import write_pyramid_tiff

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    (tmp / "root").mkdir()
    rgb, _ = synthetic_he(size=(a.size, a.size), mpp=0.5)
    slide = write_pyramid_tiff(tmp / "root" / "bench.tiff", rgb, 0.5)
    (tmp / "token").write_text("benchmark-token-0123456789\n")
    box = [(a.size - a.region) // 2] * 2 + [a.region] * 2
    proc, url = start(tmp / "root", tmp / "state", tmp / "token", a.in_process)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer benchmark-token-0123456789"}, timeout=60) as c:
            warm = run_job(c, box)
            latency = [run_job(c, box) for _ in range(a.repeats)]
        rps1 = health_rps(url, a.seconds, 1)
        rps8 = health_rps(url, a.seconds, 8)
    finally:
        proc.terminate()
        proc.wait(30)
    roi = write_roi(box, tmp / "roi.geojson")
    opts = SegmentOptions(roi=str(roi), preview=False, progress=False)
    seg = []
    for i in range(a.repeats + 1):
        t0 = time.perf_counter()
        segment(slide, tmp / f"direct{i}", MODEL, opts)
        seg.append(time.perf_counter() - t0)
    seg = seg[1:]  # the first call warms this process
    out = {"scheduler": "in-process" if a.in_process else "LocalCluster(1)", "region_px": a.region,
           "first_job_s": round(warm, 3), "job_latency_median_s": round(statistics.median(latency), 3),
           "segment_median_s": round(statistics.median(seg), 3),
           "overhead_s": round(statistics.median(latency) - statistics.median(seg), 3),
           "health_rps_1_client": round(rps1), "health_rps_8_threads": round(rps8),
           "latency_s": [round(x, 3) for x in latency], "segment_s": [round(x, 3) for x in seg]}
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
