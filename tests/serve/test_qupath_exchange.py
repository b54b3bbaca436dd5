"""The exact HTTP exchange of ``examples/qupath/segment_selection.groovy``, replayed from Python.

QuPath cannot run here, so this test reads the script's endpoints, methods and headers from its source (so
the two cannot drift apart), sends what QuPath sends (the annotation's ROI as ``GsonTools`` serialises it: a
GeoJSON Polygon of doubles, closed ring, level-0 pixels), polls like the script, and checks the result
against what ``PathIO.readObjects`` imports: a FeatureCollection of ``Feature``s with UUID ids, Polygon
geometry and ``objectType: detection``, ``classification {name, color [r, g, b]}`` and numeric
``measurements`` inside ``properties``; and that it equals ``segment --roi`` on the same geometry.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import httpx

from .conftest import REPO, Server
from .test_serve import BASELINE, cli_segment

SCRIPT = REPO / "examples" / "qupath" / "segment_selection.groovy"


def script_calls() -> list[tuple[str, str]]:
    """``(method, path prefix)`` of every ``send(...)`` call in the script, in order."""
    return re.findall(r'send\("(GET|POST|DELETE)", "([^"]+)"', SCRIPT.read_text())


def test_the_script_makes_the_exchange_this_test_replays() -> None:
    text = SCRIPT.read_text()
    assert script_calls() == [("POST", "/v1/segment"), ("GET", "/v1/jobs/"), ("GET", "/v1/jobs/")]
    assert '"/v1/jobs/" + job + "/result"' in text and '"/v1/jobs/" + job, null' in text
    for header in ('"Authorization", "Bearer " + token', '"Content-Type", "application/json"', '"Accept", "application/json"'):
        assert header in text
    assert 'status.state in ["done", "failed", "cancelled"]' in text and "body.model = MODEL" in text
    assert "[slide: slide, roi: gson.toJsonTree(annotation.getROI())]" in text


def test_qupath_exchange(server: Server, served, tmp_path: Path) -> None:
    # an irregular polygon with fractional vertices, as a QuPath brush or polygon annotation gives
    ring = [[120.5, 90.25], [470.0, 110.0], [520.75, 380.5], [260.0, 420.0], [95.0, 300.0], [120.5, 90.25]]
    roi = {"type": "Polygon", "coordinates": [ring]}
    body = json.dumps({"slide": "sub/gen.tiff", "roi": roi, "model": BASELINE})  # Gson: no spaces
    headers = {"Authorization": f"Bearer {server.token}", "Accept": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
        (post, path), (_, poll), (_, result) = script_calls()
        r = c.request(post, path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        end = time.monotonic() + 120
        while time.monotonic() < end:
            status = c.get(poll + job).json()
            if status["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)  # POLL_MS
        assert status["state"] == "done", status
        assert isinstance(status["timings"]["total_s"], float)
        got = c.get(result + job + "/result")
    assert got.status_code == 200
    fc = json.loads(got.content)
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == status["nuclei"] > 0
    for f in fc["features"]:
        assert f["type"] == "Feature" and uuid.UUID(f["id"]).version == 5
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = f["properties"]
        assert props["objectType"] == "detection" and "objectType" not in f
        cls = props["classification"]
        assert isinstance(cls["name"], str) and len(cls["color"]) == 3 and all(0 <= v <= 255 for v in cls["color"])
        assert all(isinstance(v, (int, float)) for v in props["measurements"].values())
    assert got.content == cli_segment(served["root"] / "sub" / "gen.tiff", roi, tmp_path / "cli", "--model", BASELINE)
