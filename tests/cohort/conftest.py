"""Fixtures for cohort tests: small generated slides and a real Dask scheduler + workers on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.slide.testing import write_pyramid_tiff

MODEL = "hematoxylin-baseline"  # exactly local and parameter-free: a tiny, fast, deterministic net
N_GOOD = 5


def write_cohort(folder: Path, n: int = N_GOOD) -> Path:
    """``n`` small synthetic slides (0.5 µm/px, 2 levels) plus one corrupt ``bad.svs``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb, _ = synthetic_he((384, 640), mpp=0.5, seed=i)
        write_pyramid_tiff(folder / f"s{i}.tiff", rgb, 0.5, levels=2, tile=128)
    (folder / "bad.svs").write_bytes(b"this is not a slide\n" * 64)
    return folder


@pytest.fixture(scope="session")
def cohort_slides(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("cohort") / "slides")


class DaskCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, found through a scheduler file."""

    def __init__(self, folder: Path, n_workers: int = 2) -> None:
        self.scheduler_file = folder / "scheduler.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.logs = open(folder / "dask.log", "ab")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(self.scheduler_file)],
            stdout=self.logs, stderr=subprocess.STDOUT, env=env,
        )
        self.workers = {}
        for i in range(n_workers):
            self.workers[f"w{i}"] = subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.scheduler_file),
                 "--nthreads", "1", "--no-nanny", "--name", f"w{i}", "--no-dashboard", "--host", "127.0.0.1",
                 "--death-timeout", "60"],
                stdout=self.logs, stderr=subprocess.STDOUT, env=env,
            )
        self.wait_for_workers(n_workers)

    def client(self):
        from distributed import Client

        return Client(scheduler_file=str(self.scheduler_file), timeout="30s")

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.1)
        with self.client() as c:
            c.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))

    def kill_worker(self, name: str) -> None:
        self.workers[name].send_signal(signal.SIGKILL)
        self.workers[name].wait()

    def close(self) -> None:
        for p in [*self.workers.values(), self.scheduler]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.workers.values(), self.scheduler]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.logs.close()


@pytest.fixture()
def dask_cluster(tmp_path: Path):
    (tmp_path / "dask").mkdir()
    cluster = DaskCluster(tmp_path / "dask")
    yield cluster
    cluster.close()


def ledger_rows(out: Path) -> list[dict]:
    path = out / "cohort.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
