"""``segment --regions`` and regions models through the CLI: bad inputs exit 2 with one line and leave nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsi_weakseg import cli
from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.model.card import REGIONS, ModelCard, save_model
from wsi_weakseg.model.resnet_unet import ResNet34UNet
from wsi_weakseg.slide.testing import write_pyramid_tiff

MPP = 0.5
SQUARE = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]
GLAND = {"name": "Gland", "color": [1, 2, 3]}


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    rgb, _ = synthetic_he(size=(256, 256), mpp=MPP)
    return write_pyramid_tiff(tmp_path_factory.mktemp("slide") / "good.tiff", rgb, MPP, levels=1)


def feature(geometry: dict, **properties) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


BAD_FILES = {
    "no polygons": ({"type": "FeatureCollection", "features": []}, "no region annotation"),
    "only a point": ({"type": "FeatureCollection", "features": [
        feature({"type": "Point", "coordinates": [5, 5]}, objectType="annotation", classification=GLAND)]}, "Point"),
    "unknown geometry": ({"type": "FeatureCollection", "features": [
        feature({"type": "Circle", "coordinates": [5, 5]}, classification=GLAND)]}, "unknown geometry type"),
    "a detection": ({"type": "FeatureCollection", "features": [
        feature({"type": "Polygon", "coordinates": SQUARE}, objectType="detection", classification=GLAND)]},
        "is a detection"),
    "unclassified": ({"type": "FeatureCollection", "features": [
        feature({"type": "Polygon", "coordinates": SQUARE}, objectType="annotation")]}, "no classification"),
    "not json": ("{\"type\": \"FeatureCollection\", ", "invalid JSON"),
}


def run(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_regions_file_exits_2_with_one_line_and_no_output(capsys, slide, tmp_path, case):
    content, fragment = BAD_FILES[case]
    path = tmp_path / "regions.geojson"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    code, err = run(capsys, "segment", slide, "-o", out, "--model", "hematoxylin-baseline", "--regions", path,
                    "--tissue", "all", "--no-progress")
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "--regions" in lines[0] and fragment.lower() in lines[0].lower(), lines[0]
    assert not out.exists()


def test_regions_flag_with_a_regions_model_exits_2(capsys, slide, tmp_path):
    card = ModelCard(name="glands", architecture="resnet34-unet", model_type=REGIONS, mpp=2.0, heads=["region"],
                     arch_kwargs={"width": 8}, classes=[GLAND], thresholds={"region": 0.5, "min_region_area_um2": 0},
                     tile_size=64, context_px=32, trained=False)
    model = save_model(tmp_path / "glands", card, ResNet34UNet(out_channels=1, width=8))
    path = tmp_path / "regions.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        feature({"type": "Polygon", "coordinates": SQUARE}, classification=GLAND)]}))
    out = tmp_path / "out"
    code, err = run(capsys, "segment", slide, "-o", out, "--model", model, "--regions", path, "--no-progress")
    assert code == 2 and "nucleus model" in err and not out.exists()
    code, err = run(capsys, "segment", slide, "-o", out, "--model", model, "--tissue", "all", "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["good.geojson", "good.ome.zarr", "good.preview.png", "good.run.json"]
