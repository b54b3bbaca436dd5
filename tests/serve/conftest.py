"""A real ``wsi-weakseg serve`` process on 127.0.0.1 (free port) and an HTTP client for it."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

import wsi_weakseg
from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.slide.testing import write_pyramid_tiff

REPO = Path(wsi_weakseg.__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdef"
MPP = 0.5


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    token: str
    state: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(*args: str | os.PathLike, env: dict[str, str] | None = None, deadline_s: float = 90) -> Server:
    """Start ``serve --port 0`` and wait (bounded) for its first stdout line, which names its URL."""
    full_env = {k: v for k, v in os.environ.items() if k != "WSI_WEAKSEG_TOKEN"}
    full_env.update(PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "wsi_weakseg.cli", "serve", "--port", "0", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=REPO)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = json.loads(proc.stdout.readline())
            state = Path(args[list(args).index("--state-dir") + 1])
            return Server(proc, line["url"], line.get("token", TOKEN), state)
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read().decode()}")
    proc.kill()
    raise AssertionError("serve did not start in time")


def wait_job(client: httpx.Client, job: str, states=("done", "failed", "cancelled"), deadline_s: float = 120) -> dict:
    """Poll a job until it reaches one of ``states`` (bounded)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        r = client.get(f"/v1/jobs/{job}")
        assert r.status_code == 200, r.text
        if r.json()["state"] in states:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"job {job} never reached {states}: {r.json()}")


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    """Folders: ``root`` (generated slides, a corrupt one, a symlink leaving it), the real slides, state."""
    d = tmp_path_factory.mktemp("serve")
    root = d / "root"
    (root / "sub").mkdir(parents=True)
    rgb, _ = synthetic_he(size=(512, 768), mpp=MPP)
    write_pyramid_tiff(root / "sub" / "gen.tiff", rgb, MPP)
    (root / "corrupt.svs").write_bytes(np.random.default_rng(0).bytes(20_000))
    secret = d / "outside.tiff"
    write_pyramid_tiff(secret, rgb[:256, :256], MPP, levels=2)
    (root / "escape.tiff").symlink_to(secret)
    (d / "token").write_text(TOKEN + "\n")
    return {"root": root, "real": shared_data / "slides", "state": d / "state", "token": d / "token", "dir": d}


@pytest.fixture(scope="session")
def server(served: dict[str, Path]) -> Iterator[Server]:
    """One server (LocalCluster, 1 worker) for the session's tests."""
    s = start_server("--root", served["root"], "--root", served["real"], "--state-dir", served["state"],
                     "--token-file", served["token"], "--max-queued", "3", "--max-body", "65536")
    try:
        yield s
    finally:
        s.stop()
