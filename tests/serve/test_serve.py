"""``wsi-weakseg serve`` through a real server process and a real HTTP client (127.0.0.1 only).

Results must be byte-identical to ``wsi-weakseg segment --roi`` on the same region; every refusal is a JSON
body with a message; nothing outside the roots is read; finished jobs survive a restart.
"""

from __future__ import annotations

import json
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from wsi_weakseg import cli
from wsi_weakseg.serve.roi import write_roi

from .conftest import Server, start_server, wait_job

BASELINE = "hematoxylin-baseline"


def cli_segment(slide: Path, roi, out: Path, *flags: str) -> bytes:
    """The GeoJSON bytes ``wsi-weakseg segment --roi`` writes for the same ROI as a request."""
    out.mkdir(parents=True)
    roi_file = write_roi(roi, out / "roi.geojson")
    res = cli.main(["segment", str(slide), "-o", str(out / "o"), "--roi", str(roi_file), "--no-preview",
                    "--no-progress", *flags])
    assert res == 0
    return next((out / "o").glob("*.geojson")).read_bytes()


def assert_error(r: httpx.Response, status: int, kind: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"} and body["message"], body
    if kind:
        assert body["error"] == kind, body
    return body


@pytest.fixture(scope="module")
def gen_job(server: Server) -> dict:
    """The generated slide's region, segmented by the server with the baseline model."""
    with server.client() as c:
        r = c.post("/v1/segment", json={"slide": "sub/gen.tiff", "roi": [100, 80, 420, 300], "model": BASELINE})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job"])
        assert job["state"] == "done", job
        result = c.get(f"/v1/jobs/{job['job']}/result")
        assert result.status_code == 200 and result.headers["content-type"].startswith("application/geo+json")
    return {"id": job["job"], "status": job, "bytes": result.content}


def test_health_needs_no_token_and_the_rest_do(server: Server) -> None:
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    for token in (None, "wrong-token-wrong-token"):
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        for path in ("/v1/models", "/v1/slides", "/v1/jobs", "/v1/jobs/0123456789abcdef"):
            assert_error(httpx.get(server.url + path, headers=headers), 401, "Unauthorized")
        assert_error(httpx.post(f"{server.url}/v1/segment", headers=headers, json={}), 401)
    assert_error(httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Basic {server.token}"}), 401)


def test_models_and_slides(server: Server) -> None:
    with server.client() as c:
        models = c.get("/v1/models").json()
        names = [m["name"] for m in models["models"]]
        assert BASELINE in names and models["default"] in names
        slides = {s["slide"]: s for s in c.get("/v1/slides").json()["slides"]}
    assert slides["sub/gen.tiff"]["mpp"] == 0.5 and slides["sub/gen.tiff"]["bounds"]["width"] == 768
    assert "path" not in slides["sub/gen.tiff"]  # server folders stay private
    assert slides["cmu-1-small-region.svs"]["levels"][0]["width"] == 2220  # the second root
    assert slides["corrupt.svs"]["error"] in ("SlideReadError", "UnsupportedFormatError")
    assert "escape.tiff" not in slides  # a symlink leaving its root is not listed


@pytest.mark.parametrize("name", [
    "../outside.tiff", "/etc/passwd", "sub/../../outside.tiff", "%2e%2e/outside.tiff", "%2E%2E%2Foutside.tiff",
    "%252e%252e/outside.tiff", "sub\\..\\..\\outside.tiff", "escape.tiff", "./sub/gen.tiff", "sub//gen.tiff",
    "C:/x.svs", "a\x00b.svs", "",
])
def test_names_outside_the_roots_are_403(server: Server, name: str) -> None:
    with server.client() as c:
        assert_error(c.post("/v1/segment", json={"slide": name, "roi": [0, 0, 10, 10]}), 403, "PathOutsideRootsError")


def test_url_tricks_on_job_paths(server: Server) -> None:
    with server.client() as c:
        for path in ("/v1/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/v1/jobs/..%2f..%2fstate", "/v1/jobs/0123456789abcdef",
                     "/v1/jobs/0123456789abcdef/result"):
            assert_error(c.get(path), 404)
        assert_error(c.delete("/v1/jobs/0123456789abcdef"), 404, "JobNotFoundError")
        assert_error(c.get("/v1/nothing-here"), 404, "HTTPError")
        assert_error(c.post("/v1/segment", json={"slide": "sub/missing.tiff", "roi": [0, 0, 9, 9]}), 404,
                     "SlideNotFoundError")


def test_malformed_requests(server: Server) -> None:
    with server.client() as c:
        assert_error(c.post("/v1/segment", content=b"{not json"), 400, "MalformedJSON")
        assert_error(c.post("/v1/segment", content=b"[1, 2]"), 400, "MalformedJSON")
        assert_error(c.post("/v1/segment", json={"slide": "sub/gen.tiff"}), 400, "BadRequest")
        assert_error(c.post("/v1/segment", json={"slide": "sub/gen.tiff", "roi": [0, 0, -1, 5]}), 400, "GeoJSONError")
        assert_error(c.post("/v1/segment", json={"slide": "sub/gen.tiff", "roi": {"type": "Point", "coordinates": [1, 2]}}),
                     400, "GeoJSONError")
        assert_error(c.post("/v1/segment", json={"slide": "sub/gen.tiff", "roi": [0, 0, 9, 9], "model": "nope"}),
                     400, "ModelCardError")
        assert_error(c.post("/v1/segment", json={"slide": "sub/gen.tiff", "roi": [0, 0, 9, 9], "mpp": -1}), 400)
        assert_error(c.post("/v1/segment", json={"slide": "sub/gen.tiff", "roi": [0, 0, 9, 9], "extra": 1}), 400)
        big = {"slide": "sub/gen.tiff", "roi": [0, 0, 9, 9], "pad": "x" * 70_000}
        assert_error(c.post("/v1/segment", json=big), 413, "BodyTooLarge")

        def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(40):
                yield b" " * 4096

        assert_error(c.post("/v1/segment", content=chunks()), 413, "BodyTooLarge")
        assert_error(c.put("/v1/segment", json={}), 405)
    assert all((p / "job.json").exists() for p in (server.state / "jobs").iterdir())  # refusals leave no folder


def test_generated_slide_equals_segment_roi(server: Server, gen_job: dict, tmp_path: Path, served) -> None:
    expected = cli_segment(served["root"] / "sub" / "gen.tiff", [100, 80, 420, 300], tmp_path / "cli", "--model", BASELINE)
    assert gen_job["bytes"] == expected
    status = gen_job["status"]
    assert status["progress"] == 1.0 and status["nuclei"] == len(json.loads(expected)["features"]) > 0
    assert status["timings"]["running_s"] > 0 and status["error"] is None


def test_real_slide_default_model_equals_segment_roi(server: Server, served, tmp_path: Path) -> None:
    roi = {"type": "Polygon", "coordinates": [[[1000, 1200], [1300, 1200], [1300, 1450], [1000, 1450], [1000, 1200]]]}
    with server.client() as c:
        r = c.post("/v1/segment", json={"slide": "cmu-1-small-region.svs", "roi": roi})
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['job']}"
        job = wait_job(c, r.json()["job"])
        assert job["state"] == "done", job
        got = c.get(f"/v1/jobs/{job['job']}/result").content
    assert got == cli_segment(served["real"] / "cmu-1-small-region.svs", roi, tmp_path / "cli")
    fc = json.loads(got)  # QuPath's conventions: detections, UUID ids, objectType inside properties
    assert fc["type"] == "FeatureCollection" and fc["features"]
    for f in fc["features"][:20]:
        assert f["properties"]["objectType"] == "detection" and uuid.UUID(f["id"])
        xs = [x for x, _ in f["geometry"]["coordinates"][0]]
        assert 900 < min(xs) and max(xs) < 1400  # level-0 frame, around the ROI


def test_corrupt_slide_fails_with_the_typed_message(server: Server, served) -> None:
    from wsi_weakseg.errors import SlideReadError
    from wsi_weakseg.slide import open_slide

    with pytest.raises(SlideReadError) as raised:
        open_slide(served["root"] / "corrupt.svs")
    with server.client() as c:
        r = c.post("/v1/segment", json={"slide": "corrupt.svs", "roi": [0, 0, 100, 100], "model": BASELINE})
        job = wait_job(c, r.json()["job"])
        assert job["state"] == "failed"
        assert job["error"] == {"type": type(raised.value).__name__,
                                "message": str(raised.value).replace(str(served["root"] / "corrupt.svs"), "corrupt.svs")}
        assert str(served["root"]) not in json.dumps(job)
        body = assert_error(c.get(f"/v1/jobs/{job['job']}/result"), 409, "JobNotDone")
        assert "submit a new job" in body["message"]


def test_cancel_queued_and_running_and_concurrent_status(server: Server) -> None:
    slow = {"slide": "cmu-1-small-region.svs", "roi": [0, 0, 1400, 1400], "model": BASELINE}
    with server.client() as c:
        running = c.post("/v1/segment", json=slow).json()["job"]
        queued = [c.post("/v1/segment", json=slow) for _ in range(4)]
        assert [r.status_code for r in queued[:3]] == [202] * 3  # --max-queued 3
        full = assert_error(queued[3], 429, "QueueFullError")
        assert queued[3].headers["retry-after"] and "DELETE" in full["message"]
        wait_job(c, running, states=("running",), deadline_s=30)

        def status(_: int) -> tuple[int, str]:
            r = c.get(f"/v1/jobs/{running}")
            return r.status_code, r.json()["state"]

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(status, range(50)))
        assert all(code == 200 and state in ("running", "done") for code, state in results), results
        for r in queued[:3]:
            gone = c.delete(f"/v1/jobs/{r.json()['job']}").json()
            assert gone["state"] == "cancelled"
        assert c.delete(f"/v1/jobs/{running}").json()["state"] in ("cancelled", "done")
        assert_error(c.get(f"/v1/jobs/{queued[0].json()['job']}/result"), 409, "JobNotDone")
        assert c.get(f"/v1/jobs/{queued[0].json()['job']}").json()["state"] == "cancelled"  # stays cancelled
        jobs = c.get("/v1/jobs").json()["jobs"]
        assert all(set(j) >= {"job", "state", "progress", "timings"} for j in jobs)


def test_finished_jobs_survive_a_restart(server: Server, gen_job: dict, served, tmp_path: Path) -> None:
    """A second server process (no Dask, generated token) on the state the first wrote serves its jobs."""
    state = tmp_path / "state"
    shutil.copytree(server.state, state)
    stale = state / "jobs" / "feedfeedfeedfeed"
    stale.mkdir()
    job = json.loads((state / "jobs" / gen_job["id"] / "job.json").read_text())
    (stale / "job.json").write_text(json.dumps({**job, "id": stale.name, "state": "running", "finished": None}))
    again = start_server("--root", served["root"], "--state-dir", state, "--in-process")
    try:
        assert again.token != server.token  # generated and printed
        with again.client() as c:
            assert c.get(f"/v1/jobs/{gen_job['id']}").json()["state"] == "done"
            assert c.get(f"/v1/jobs/{gen_job['id']}/result").content == gen_job["bytes"]
            lost = c.get(f"/v1/jobs/{stale.name}").json()
            assert lost["state"] == "failed" and "submit it again" in lost["error"]["message"]
        assert_error(httpx.get(f"{again.url}/v1/jobs", headers={"Authorization": f"Bearer {server.token}"}), 401)
    finally:
        again.stop()


def test_refuses_other_hosts_without_a_token_file(served, capsys) -> None:
    assert cli.main(["serve", "--root", str(served["root"]), "--host", "0.0.0.0"]) == 2
    assert "--token-file" in capsys.readouterr().err


def test_keep_alive_requests_do_not_wait_for_delayed_acks(server: Server) -> None:
    """100 keep-alive /health requests in well under 2 s (~4.5 s without TCP_NODELAY: 40 ms each)."""
    import time

    with httpx.Client(base_url=server.url) as c:
        c.get("/health")
        t0 = time.perf_counter()
        for _ in range(100):
            assert c.get("/health").status_code == 200
        assert time.perf_counter() - t0 < 2.0
