"""End to end on real OpenSlide files: the three shared slides, and a generated slide with bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box, shape

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.errors import MissingMppError
from wsi_weakseg.io.geojson import read_features
from wsi_weakseg.model.card import BASELINE_MODEL
from wsi_weakseg.slide.testing import write_leica_scn, write_pyramid_tiff

OPTS = dict(progress=False, batch_size=4)


def _roi(path: Path, x0: float, y0: float, x1: float, y1: float) -> Path:
    feature = {"type": "Feature", "geometry": json.loads(json.dumps(box(x0, y0, x1, y1).__geo_interface__)),
               "properties": {"objectType": "annotation"}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_bounds_frame_matches_qupath(tmp_path: Path):
    """Coordinates are relative to the bounds origin: a slide whose image sits at (101, 61) inside a larger
    scan gives the same polygons as the bare image, and run.json records the offset."""
    rgb, _ = synthetic_he(size=(512, 768), mpp=0.5, seed=3)
    plain = write_pyramid_tiff(tmp_path / "plain.tiff", rgb, 0.5, levels=2, tile=256)
    scn = write_leica_scn(tmp_path / "bounds.scn", rgb, 0.5, offset=(101, 61), slide_size=(1200, 900))
    a = segment(plain, tmp_path / "a", BASELINE_MODEL, options=SegmentOptions(**OPTS))
    b = segment(scn, tmp_path / "b", BASELINE_MODEL, options=SegmentOptions(**OPTS))
    ga = [f["geometry"] for f in read_features(a.geojson)]
    gb = [f["geometry"] for f in read_features(b.geojson)]
    assert len(ga) >= 100 and ga == gb
    run = json.loads(b.run_json.read_text())
    assert run["coordinates"]["origin_level0"] == [101, 61]
    assert run["slide"]["bounds"] == [101, 61, 768, 512]


def test_cmu1_svs_with_roi(shared_data: Path, tmp_path: Path):
    """Aperio JPEG SVS at 0.499 µm/px is read as is (within tolerance of the model's 0.5); --roi restricts nuclei."""
    slide = shared_data / "slides" / "cmu-1-small-region.svs"
    roi = _roi(tmp_path / "roi.geojson", 800, 1200, 1400, 1700)
    res = segment(slide, tmp_path / "out", BASELINE_MODEL, options=SegmentOptions(roi=str(roi), **OPTS))
    run = json.loads(res.run_json.read_text())
    assert run["working"]["resampled"] is False and run["working"]["scale"] == 1.0
    feats = read_features(res.geojson)
    assert len(feats) >= 50
    region = box(800, 1200, 1400, 1700)
    assert run["tiles"]["processed"] < run["tiles"]["total"]
    # every nucleus is anchored inside the ROI, so its polygon intersects it
    assert all(shape(f["geometry"]).intersects(region) for f in feats)


def test_tcga_jp2k_svs_needs_mpp(shared_data: Path, tmp_path: Path):
    slide = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(MissingMppError, match="--mpp"):
        segment(slide, tmp_path / "x", BASELINE_MODEL, options=SegmentOptions(**OPTS))
    assert not (tmp_path / "x").exists()
    roi = _roi(tmp_path / "roi.geojson", 2000, 1600, 2600, 2100)
    res = segment(slide, tmp_path / "out", BASELINE_MODEL, options=SegmentOptions(mpp=0.5, roi=str(roi), **OPTS))
    run = json.loads(res.run_json.read_text())
    assert run["slide"]["mpp_source"] == "user" and run["working"]["level"] == 0
    assert res.n_nuclei >= 20
    xs = np.concatenate([np.asarray(f["geometry"]["coordinates"][0])[:, 0] for f in read_features(res.geojson)])
    assert xs.min() >= 1900 and xs.max() <= 2700  # level-0 coordinates, not level-1
