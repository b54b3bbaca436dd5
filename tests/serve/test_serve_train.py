"""``POST /v1/train`` and per-tile progress, through a real server process (127.0.0.1, LocalCluster of 1).

One server serves a root holding three CRCHistoPhenotypes images with their point exports (copied from the
shared data: a spec may only name files under a root) and a generated slide; it cuts every job into 32 px
tiles (``--tile-size 32``) so that a segment job runs long enough to be seen part-way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.slide.testing import write_pyramid_tiff

from .conftest import MPP, Server, start_server, wait_job
from .test_serve import BASELINE, assert_error

TINY = {"data": {"spec": "crc/spec.yaml", "patch": 224, "crop": 192}, "model": {"width": 8},
        "optim": {"batch_size": 4}, "points": {"gamma_epochs": 1}}


def _spec(items: list[dict]) -> str:
    return json.dumps({"defaults": {"mpp": 0.55, "point_classes": ["Nucleus"]}, "items": items})


@pytest.fixture(scope="module")
def train_root(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    d = tmp_path_factory.mktemp("serve-train")
    crc, src = d / "root" / "crc", shared_data / "crchisto-points"
    crc.mkdir(parents=True)
    items = []
    for i, split in (("img1", "train"), ("img2", "train"), ("img3", "validation")):
        shutil.copy(src / "images" / f"{i}.png", crc / f"{i}.png")
        shutil.copy(src / "points" / f"{i}.geojson", crc / f"{i}.geojson")
        items.append({"image": f"{i}.png", "points": f"{i}.geojson", "split": split})
    (crc / "spec.yaml").write_text(_spec(items))
    # specs that name files outside the root: directly, by '..', and through a symlink
    outside = src / "images" / "img1.png"
    (crc / "abs.yaml").write_text(_spec([{"image": str(outside), "points": "img1.geojson"}] + items[1:]))
    (crc / "dotdot.yaml").write_text(_spec([{"image": "../../../outside.png", "points": "img1.geojson"}] + items[1:]))
    (crc / "link.png").symlink_to(outside)
    (crc / "link.yaml").write_text(_spec([{"image": "link.png", "points": "img1.geojson"}] + items[1:]))
    rgb, _ = synthetic_he(size=(512, 512), mpp=MPP)
    write_pyramid_tiff(d / "root" / "big.tiff", rgb, MPP)
    (d / "token").write_text("train-token-0123456789abcdef\n")
    return d


@pytest.fixture(scope="module")
def train_server(train_root: Path) -> Iterator[Server]:
    s = start_server("--root", train_root / "root", "--state-dir", train_root / "state", "--token-file",
                     train_root / "token", "--tile-size", "32", "--device", "cpu")
    s.token = "train-token-0123456789abcdef"
    try:
        yield s
    finally:
        s.stop()


def test_segment_progress_rises_between_0_and_1(train_server: Server) -> None:
    """A Dask-run job reports per-tile progress through its job folder: seen strictly inside (0, 1)."""
    with train_server.client() as c:
        r = c.post("/v1/segment", json={"slide": "big.tiff", "roi": [0, 0, 384, 384], "model": BASELINE})
        assert r.status_code == 202, r.text
        seen, end = [], time.monotonic() + 120
        while time.monotonic() < end:
            job = c.get(f"/v1/jobs/{r.json()['job']}").json()
            seen.append(job["progress"])
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.05)
    assert job["state"] == "done" and job["progress"] == 1.0, job
    assert any(0.0 < p < 1.0 for p in seen), seen
    assert seen == sorted(seen)  # never goes back


def test_train_job_reports_epochs_and_serves_its_model(train_server: Server, train_root: Path) -> None:
    with train_server.client() as c:
        t0 = time.monotonic()
        r = c.post("/v1/train", json={"config": TINY, "name": "tiny-crc", "epochs": 2})
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]
        assert_error(c.post("/v1/train", json={"config": TINY, "name": "tiny-crc"}), 409, "ModelNameTakenError")
        seen, end = [], time.monotonic() + 120
        while time.monotonic() < end:
            job = c.get(f"/v1/jobs/{job_id}").json()
            seen.append((job["progress"], job["epochs_done"]))
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        wall = time.monotonic() - t0
        assert job["state"] == "done", job
        print(f"tiny train job: {wall:.1f} s (server timings {job['timings']})")
        assert job["kind"] == "train" and job["model"] == "tiny-crc" and job["progress"] == 1.0
        assert job["epochs"] == 2 and job["epochs_done"] == 2
        assert [h["epoch"] for h in job["history"]] == [0, 1]
        for h in job["history"]:  # per-epoch validation means of both co-trained nets (points only: detection)
            assert set(h["validation"]) == {"a", "b"} and {"precision", "recall", "f1"} <= set(h["validation"]["a"])
        assert job["shipped"]["net"] in ("a", "b") and "f1" in job["metrics"]
        assert any(0.0 < p < 1.0 for p, _ in seen) and [p for p, _ in seen] == sorted(p for p, _ in seen)
        assert str(train_root) not in json.dumps(job)
        assert_error(c.get(f"/v1/jobs/{job_id}/result"), 409, "NoResultFile")

        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["tiny-crc"]["source"] == "trained" and "f1" in models["tiny-crc"]["metrics"]
        card = json.loads((train_root / "state" / "models" / "tiny-crc" / "card.json").read_text())
        assert card["name"] == "tiny-crc" and len(card["training"]["history"]) == 2
        assert_error(c.post("/v1/train", json={"config": TINY, "name": "tiny-crc"}), 409, "ModelNameTakenError")

        r = c.post("/v1/segment", json={"slide": "crc/img3.png", "roi": [100, 100, 160, 160], "model": "tiny-crc",
                                        "mpp": 0.55})
        assert r.status_code == 202, r.text
        seg = wait_job(c, r.json()["job"])
        assert seg["state"] == "done" and seg["model"] == "tiny-crc", seg
        fc = c.get(f"/v1/jobs/{seg['job']}/result").json()
        assert fc["type"] == "FeatureCollection" and len(fc["features"]) == seg["nuclei"]


@pytest.mark.parametrize("spec", ["crc/abs.yaml", "crc/dotdot.yaml", "crc/link.yaml", "../spec.yaml",
                                  "/etc/passwd", "%2e%2e/token", "crc/link.png/../spec.yaml"])
def test_spec_outside_the_roots_is_403(train_server: Server, spec: str) -> None:
    with train_server.client() as c:
        body = assert_error(c.post("/v1/train", json={"config": {**TINY, "data": {**TINY["data"], "spec": spec}},
                                                      "name": "x"}), 403, "PathOutsideRootsError")
    assert "/work/shared" not in body["message"] and str(train_server.state) not in body["message"]


@pytest.mark.parametrize("change, status, kind", [
    ({"name": "../evil"}, 400, "ModelNameError"),
    ({"name": "a/b"}, 400, "ModelNameError"),
    ({"name": ""}, 400, "ModelNameError"),
    ({"name": 7}, 400, "ModelNameError"),
    ({"name": BASELINE}, 409, "ModelNameTakenError"),
    ({"epochs": 0}, 400, "ConfigError"),
    ({"extra": 1}, 400, "ConfigError"),
    ({"config": {**TINY, "optim": {"nope": 1}}}, 400, "ConfigError"),
    ({"config": {**TINY, "data": {**TINY["data"], "items": "x.npz"}}}, 400, "ConfigError"),
    ({"config": {**TINY, "data": {**TINY["data"], "spec": "crc/missing.yaml"}}}, 404, "SlideNotFoundError"),
    ({"config": "not a mapping"}, 400, "ConfigError"),
])
def test_bad_train_requests(train_server: Server, change: dict, status: int, kind: str) -> None:
    with train_server.client() as c:
        assert_error(c.post("/v1/train", json={"config": TINY, "name": "ok-name", **change}), status, kind)
        assert "ok-name" not in [m["name"] for m in c.get("/v1/models").json()["models"]]


def test_cancel_stops_a_running_train_job(train_server: Server) -> None:
    """Unlike a Dask segment task, a train job is interrupted: its hooks see the cancel at the next step."""
    with train_server.client() as c:
        job_id = c.post("/v1/train", json={"config": TINY, "name": "cancelled-crc", "epochs": 500}).json()["job"]
        end = time.monotonic() + 60
        while c.get(f"/v1/jobs/{job_id}").json()["progress"] == 0.0 and time.monotonic() < end:
            time.sleep(0.1)
        assert c.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
        staging = train_server.state / "jobs" / job_id / "model"
        while staging.exists() and time.monotonic() < end:  # the thread left the job and cleaned up
            time.sleep(0.1)
        assert not staging.exists()
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
        assert "cancelled-crc" not in [m["name"] for m in c.get("/v1/models").json()["models"]]
