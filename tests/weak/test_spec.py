"""The training data spec: parsing, validation, path resolution, defaults, and points per item."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_weakseg.errors import ConfigError, GeoJSONError, MissingMppError
from wsi_weakseg.slide.testing import write_leica_scn
from wsi_weakseg.weak.spec import DataSpec, SpecItem, load_item_points, load_spec


def _points_file(path: Path, xy, region=None, cls="Nucleus") -> Path:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "MultiPoint", "coordinates": [list(p) for p in xy]},
            "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [255, 0, 0]}},
        }
    ]
    if region is not None:
        x0, y0, x1, y1 = region
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "name": "Annotated region"},
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _png(path: Path, width: int = 40, height: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 180, np.uint8)).save(path)
    return path


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A folder with two images, their points, and room for a spec."""
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / "b.png", 20, 20)
    _points_file(tmp_path / "points" / "a.geojson", [(5.5, 5.5), (39.5, 29.5), (45.0, 5.0)])
    _points_file(tmp_path / "points" / "b.geojson", [(2.0, 2.0), (10.0, 10.0)], region=(0, 0, 8, 8))
    return tmp_path


def _spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


GOOD = """
# two items
defaults:
  mpp: 0.25
  point_classes: [Nucleus]
items:
  - image: images/a.png
    points: points/a.geojson
  - image: images/b.png
    points: ./points/b.geojson
    mpp: 0.5
    point_classes: null
    region_classes: Annotated region
    split: validation
"""


def test_load_spec_resolves_paths_and_applies_defaults(project, monkeypatch):
    spec_dir = project / "specs"
    spec_dir.mkdir()
    text = GOOD.replace("images/", "../images/").replace("points/", "../points/")
    path = _spec(spec_dir, text)
    monkeypatch.chdir(project / "images")  # resolution must not depend on the working folder
    spec = load_spec(path)
    assert isinstance(spec, DataSpec) and spec.path == path.resolve() and len(spec) == 2
    a, b = spec.items
    assert a == SpecItem(
        image=(project / "images" / "a.png").resolve(),
        points=(project / "points" / "a.geojson").resolve(),
        kind="image",
        mpp=0.25,
        point_classes=("Nucleus",),
        region_classes=None,
        split="train",
    )
    assert a.image.is_absolute() and a.points.is_file()
    assert b.image == (project / "images" / "b.png").resolve()
    assert b.mpp == 0.5 and b.point_classes is None and b.region_classes == ("Annotated region",)
    assert b.split == "validation"
    assert spec.split("train") == (a,) and spec.split("validation") == (b,) and spec.split("test") == ()
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        spec.split("val")


def test_absolute_paths_and_slide_items(project):
    scn = write_leica_scn(project / "s.scn", np.full((64, 64, 3), 200, np.uint8), 0.5, (32, 16), (256, 128))
    text = f"items:\n  - slide: {scn}\n    points: points/a.geojson\n    split: test\n"
    spec = load_spec(_spec(project, text))
    (item,) = spec.items
    assert item.kind == "slide" and item.image == scn.resolve() and item.split == "test" and item.mpp is None


ITEM_KEYS = ("image, slide, points, scribbles, masks, region, region_points, labels, mpp, point_classes, "
             "region_classes, nucleus_classes, background_classes, in_classes, out_classes, split")


@pytest.mark.parametrize(
    ("text", "where", "key", "allowed"),
    [
        ("itmes: []\nitems: [{image: a.png, points: points/a.geojson}]", "spec.yaml", "itmes", "defaults, items"),
        (
            "defaults: {mpp: 0.25, split: test}\nitems: [{image: images/a.png, points: points/a.geojson}]",
            "defaults",
            "split",
            "mpp, point_classes, region_classes, nucleus_classes, background_classes",
        ),
        ("items: [{image: images/a.png, points: points/a.geojson, pionts: x}]", "item 0", "pionts", ITEM_KEYS),
    ],
)
def test_unknown_keys_named(project, text, where, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(project, text))
    assert f"{where}: unknown key '{key}'; allowed keys are {allowed}" in str(err.value)


def test_missing_file_names_item_and_path(project):
    text = (
        "items:\n"
        "  - {image: images/a.png, points: points/a.geojson}\n"
        "  - {image: images/b.png, points: points/missing.geojson}\n"
    )
    with pytest.raises(ConfigError, match=r"item 1: points file not found: .*points/missing\.geojson"):
        load_spec(_spec(project, text))
    with pytest.raises(ConfigError, match=r"item 0: image file not found: .*nope\.png"):
        load_spec(_spec(project, "items: [{image: nope.png, points: points/a.geojson}]"))
    with pytest.raises(ConfigError, match="data spec not found"):
        load_spec(project / "absent.yaml")


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("{image: images/a.png, slide: images/b.png, points: points/a.geojson}", "exactly one of 'image'"),
        ("{points: points/a.geojson}", "exactly one of 'image'"),
        ("{image: images/a.png, masks: nope.geojson}", "masks file not found"),  # (no labels at all: unlabelled)
        ("{image: images/a.png, points: points/a.geojson, split: val}", "split must be one of train, validation, test"),
        ("{image: images/a.png, points: points/a.geojson, mpp: 0}", "mpp must be a positive number"),
        ("{image: images/a.png, points: points/a.geojson, mpp: -0.25}", "mpp must be a positive number"),
        ("{image: images/a.png, points: points/a.geojson, mpp: .nan}", "mpp must be a positive number"),
        ("{image: images/a.png, points: points/a.geojson, mpp: .inf}", "mpp must be a positive number"),
        ("{image: images/a.png, points: points/a.geojson, mpp: '0.25'}", "mpp must be a positive number"),
        ("{image: images/a.png, points: points/a.geojson, mpp: true}", "mpp must be a positive number"),
        ("{image: images/a.png, points: points/a.geojson, point_classes: []}", "point_classes must be null"),
        ("{image: 3, points: points/a.geojson}", "image must be a file path"),
        ("images/a.png", "must be a mapping"),
    ],
)
def test_bad_items(project, item, match):
    text = f"items:\n  - {{image: images/b.png, points: points/b.geojson}}\n  - {item}\n"
    with pytest.raises(ConfigError, match=rf"item 1: .*{match}"):
        load_spec(_spec(project, text))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("items: []", "non-empty list"),
        ("defaults: {mpp: 0.25}", "non-empty list"),
        ("items:", "non-empty list"),
        ("", "must be a mapping"),
        ("- image: a.png", "must be a mapping"),
        ("items: [\n  {image: a.png", "not a valid YAML"),
        ("defaults: {mpp: -1}\nitems: [{image: images/a.png, points: points/a.geojson}]", "defaults: mpp must be"),
        ("defaults: [mpp]\nitems: [{image: images/a.png, points: points/a.geojson}]", "defaults must be a mapping"),
    ],
)
def test_bad_spec_files(project, text, match):
    with pytest.raises(ConfigError, match=match):
        load_spec(_spec(project, text))


def test_load_item_points_on_generated_image(project, caplog):
    spec = load_spec(_spec(project, GOOD))
    a, b = spec.items
    with caplog.at_level(logging.WARNING, logger="wsi_weakseg"):
        pa = load_item_points(a)
    # the 40x30 image: (45, 5) lies outside it; (39.5, 29.5) is in the last pixel
    assert pa.xy.tolist() == [[5.5, 5.5], [39.5, 29.5]] and pa.n_dropped_outside == 1
    assert pa.regions is None and pa.classes == ("Nucleus", "Nucleus")
    assert "outside the 40x30 image" in caplog.text
    pb = load_item_points(b)  # region [0, 8]^2 selected by class name
    assert pb.xy.tolist() == [[2.0, 2.0]] and pb.n_dropped_outside == 1 and pb.regions.area == 64

    # the point-class default (Nucleus) filters everything out of a file of other clicks
    _points_file(project / "points" / "t.geojson", [(1.0, 1.0)], cls="Tumor")
    item = SpecItem(project / "images" / "a.png", project / "points" / "t.geojson", "image", 0.25, ("Nucleus",))
    with pytest.raises(GeoJSONError, match=r"no points of class \['Nucleus'\].*Tumor \(1\)"):
        load_item_points(item)

    # a PNG without pixel size and no mpp in the spec
    item = SpecItem(project / "images" / "a.png", project / "points" / "a.geojson", "image")
    with pytest.raises(MissingMppError, match="set 'mpp' for this item or under 'defaults'"):
        load_item_points(item)


def test_load_item_points_on_slide_uses_bounds_and_needs_region(project):
    # main image 64x48 at offset (32, 16) in a 256x128 slide: QuPath coordinates start at the bounds origin
    scn = write_leica_scn(project / "s.scn", np.full((48, 64, 3), 200, np.uint8), 0.5, (32, 16), (256, 128))
    no_region = _points_file(project / "points" / "s.geojson", [(10.0, 10.0), (70.0, 10.0)])
    item = SpecItem(scn, no_region, "slide")
    with pytest.raises(GeoJSONError, match="draw an annotation region in QuPath"):
        load_item_points(item)
    with_region = _points_file(
        project / "points" / "s2.geojson", [(10.0, 10.0), (70.0, 10.0), (63.5, 47.5)], region=(0, 0, 100, 100)
    )
    ps = load_item_points(SpecItem(scn, with_region, "slide"))
    # x = 70 is inside the level-0 slide (256 wide) but outside the 64-wide bounds: dropped
    assert ps.xy.tolist() == [[10.0, 10.0], [63.5, 47.5]] and ps.n_dropped_outside == 1
    # the same file for a plain image item: no region needed
    assert len(load_item_points(SpecItem(project / "images" / "a.png", no_region, "image", 0.25))) == 1
