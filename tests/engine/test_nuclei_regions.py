"""Nuclei per region (``segment --regions``): membership by centroid, counts and densities, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.features import DetectionFormat
from wsi_weakseg.engine.nuclei_regions import RegionClasses, region_density_record
from wsi_weakseg.engine.records import BlockNuclei, Nucleus
from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.io.geojson import read_features
from wsi_weakseg.slide.testing import write_pyramid_tiff

MPP = 0.5


def region_file(path: Path, polygons: list[tuple[str, list]], object_type: str = "annotation") -> Path:
    """A QuPath-style FeatureCollection of classified polygon annotations."""
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                 "properties": {"objectType": object_type, "classification": {"name": name, "color": [1, 2, 3]}}}
                for name, ring in polygons]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_counts_and_densities_of_known_centroids_in_two_regions():
    """Gland: two 100x100 squares (one a separate polygon of the same class); Stroma: a 200x50 strip."""
    regions = RegionClasses({
        "Gland": shapely.union_all([shapely.box(0, 0, 100, 100), shapely.box(300, 0, 400, 100)]),
        "Stroma": shapely.box(0, 150, 200, 200),
    })
    x = np.array([10, 50, 99.9, 350, 150, 10, 500, 100])
    y = np.array([10, 50, 99.9, 20, 170, 160, 500, 50])  # last: on the Gland's edge, not strictly inside
    inside = regions.contains_xy(x, y)
    assert inside.tolist() == [[1, 0], [1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0]]
    record = region_density_record(regions, inside.sum(axis=0), mpp_level0=0.5, within=None)
    # Gland: 4 nuclei in 2 x 100² px at 0.5 µm/px = 5000 µm² = 0.005 mm² -> 800 /mm²;
    # Stroma: 2 nuclei in 200 x 50 px = 2500 µm² = 0.0025 mm² -> 800 /mm²
    assert record == {"Gland": {"nuclei": 4, "area_mm2": 0.005, "nuclei_per_mm2": 800.0},
                      "Stroma": {"nuclei": 2, "area_mm2": 0.0025, "nuclei_per_mm2": 800.0}}
    clipped = region_density_record(regions, inside.sum(axis=0), 0.5, within=shapely.box(0, 0, 100, 1000))
    assert clipped["Gland"]["area_mm2"] == 0.0025 and clipped["Stroma"]["area_mm2"] == 0.00125


def test_formatter_writes_region_measurements_byte_for_byte_as_the_general_path():
    regions = RegionClasses({"Gland": shapely.box(0, 0, 20, 20), "Tumour area": shapely.box(10, 0, 40, 20)})
    nuclei = []
    for k, (x, y) in enumerate([(2, 2), (12, 4), (30, 10), (60, 60)]):  # Gland, both, Tumour, none
        ring = np.array([[x, y], [x + 2, y], [x + 2, y + 2], [x, y + 2], [x, y]], float)
        nuclei.append(Nucleus(k + 1, (y, x), [ring], 4, 0.5, 0.5, False))
    fmt = DetectionFormat("fp", "sha", 1.0, (0.0, 0.0), 0.5, "Nucleus", (1, 2, 3), regions=regions)
    block = fmt.format_block(BlockNuclei.from_nuclei(nuclei))
    texts = [block.texts(i) for i in range(4)]
    assert texts == [fmt.reference(n) for n in nuclei]
    flags = [[json.loads(f"{h}1{t}")["properties"]["measurements"][f"Region: {c}"] for c in ("Gland", "Tumour area")]
             for h, t in texts]
    assert flags == [[1, 0], [1, 1], [0, 1], [0, 0]]


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    rgb, _ = synthetic_he(size=(384, 512), mpp=MPP, seed=2)
    return write_pyramid_tiff(tmp_path_factory.mktemp("slide") / "s.tiff", rgb, MPP, levels=1)


def test_segment_with_regions_measures_each_nucleus_and_reports_densities(slide, tmp_path):
    """Every nucleus's measurements match its written outline's centroid; run.json counts them by class."""
    path = region_file(tmp_path / "regions.geojson", [("Gland", square(0, 0, 256, 384)),
                                                      ("Stroma", square(256, 100, 512, 300))])
    res = segment(slide, tmp_path / "out", "hematoxylin-baseline",
                  SegmentOptions(tissue="all", regions=str(path), progress=False, preview=False))
    features = read_features(res.geojson)
    assert len(features) > 50
    geoms = {"Gland": shapely.box(0, 0, 256, 384), "Stroma": shapely.box(256, 100, 512, 300)}
    counts = dict.fromkeys(geoms, 0)
    for f in features:
        c = shape(f["geometry"]).centroid
        for name, g in geoms.items():
            flag = f["properties"]["measurements"][f"Region: {name}"]
            assert flag == int(g.contains(c))
            counts[name] += flag
    per_region = json.loads(res.run_json.read_text())["nuclei_per_region"]
    for name, g in geoms.items():
        area = g.area * MPP**2 / 1e6
        assert per_region[name] == {"nuclei": counts[name], "area_mm2": round(area, 6),
                                    "nuclei_per_mm2": round(counts[name] / area, 3)}
    assert min(counts.values()) > 10


def test_membership_from_many_threads_equals_the_serial_answer():
    """Block threads share one tree (built before they start, only read): concurrent queries agree with serial."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    discs = {f"c{k}": shapely.union_all([shapely.Point(*rng.uniform(0, 1000, 2)).buffer(rng.uniform(20, 80))
                                         for _ in range(30)]) for k in range(3)}
    regions = RegionClasses(discs)
    batches = [rng.uniform(0, 1000, (2, 20000)) for _ in range(16)]
    serial = [regions.contains_xy(x, y) for x, y in batches]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda b: regions.contains_xy(*b), batches))
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded))
    x, y = batches[0]
    assert np.array_equal(serial[0][:, 1], shapely.contains_xy(discs["c1"], x, y))  # "within" = strictly inside
