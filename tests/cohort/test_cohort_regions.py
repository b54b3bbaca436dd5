"""Cohorts with per-slide region annotations: the manifest's ``regions`` column, the digest and the ledger row."""

from __future__ import annotations

import json
from pathlib import Path

from wsi_weakseg.cohort.inputs import find_slides
from wsi_weakseg.cohort.task import (
    expected_identity,
    process_slide,
    read_done,
    result_row,
)
from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.segment import SegmentOptions
from wsi_weakseg.model.card import load_model
from wsi_weakseg.slide.testing import write_pyramid_tiff

MODEL = "hematoxylin-baseline"


def test_manifest_regions_column_reaches_the_ledger_row(tmp_path: Path):
    rgb, _ = synthetic_he((256, 384), mpp=0.5, seed=4)
    write_pyramid_tiff(tmp_path / "a.tiff", rgb, 0.5, levels=1)
    write_pyramid_tiff(tmp_path / "b.tiff", rgb, 0.5, levels=1)
    ring = [[0, 0], [192, 0], [192, 256], [0, 256], [0, 0]]
    (tmp_path / "a.regions.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumour", "color": [200, 0, 0]}}}]}))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,regions\na.tiff,a.regions.geojson\nb.tiff,\n")
    a, b = find_slides(manifest)
    assert a.regions == tmp_path / "a.regions.geojson" and b.regions is None

    opts = SegmentOptions(tissue="all", progress=False, preview=False)
    sha = load_model(MODEL).sha256
    assert "regions" not in expected_identity(b, opts, sha)["inputs"]["options"]  # digests of older cohorts kept
    ident = expected_identity(a, opts, sha)
    assert ident["inputs"]["options"]["regions"].startswith("sha256:")
    row = process_slide(a, str(tmp_path / "out"), MODEL, sha, opts, ident)
    assert row["status"] == "done", row
    run = json.loads((tmp_path / "out" / "a" / "a.run.json").read_text())
    tumour = run["nuclei_per_region"]["Tumour"]
    assert tumour["area_mm2"] == 192 * 256 * 0.25 / 1e6 and tumour["nuclei"] > 10
    assert row["nuclei_per_mm2_by_region"] == {"Tumour": tumour["nuclei_per_mm2"]}
    # a slide skipped as done reports the same
    assert result_row(a, read_done(tmp_path / "out" / "a", ident))["nuclei_per_mm2_by_region"] == \
        row["nuclei_per_mm2_by_region"]
