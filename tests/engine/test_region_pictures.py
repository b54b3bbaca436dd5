"""A regions run's pictures and its ROI, on a planted map: a "gland" rectangle with a rectangular hole and a
separate square, written into the OME-Zarr in place of the network's map (a stub of ``infer_maps``; the tiny
net and the seams are tested in test_region_model.py). Oracles are the known shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
import zarr
from PIL import Image
from shapely.geometry import box, shape

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine import pictures
from wsi_weakseg.engine import segment as segment_module
from wsi_weakseg.engine.region_pictures import outline_pixels
from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.io.geojson import read_features
from wsi_weakseg.model.card import REGIONS, ModelCard, save_model
from wsi_weakseg.model.resnet_unet import ResNet34UNet
from wsi_weakseg.slide import WorkingView, open_slide
from wsi_weakseg.slide.testing import write_pyramid_tiff
from wsi_weakseg.viz import outline_mask
from wsi_weakseg.viz.preview import TISSUE_COLOUR
from wsi_weakseg.viz.regions import FILL_ALPHA, region_composite

MPP = 2.0
SHAPE = (256, 320)
COLOUR = (20, 160, 60)
#: working px (x0, y0, x1, y1): the gland, its lumen, and a square region apart (ids 1 and 2 by raster order)
GLAND, LUMEN, SQUARE = (60, 40, 200, 200), (100, 90, 160, 150), (240, 60, 300, 120)


def planted() -> np.ndarray:
    prob = np.full(SHAPE, 20, np.uint8)
    for (x0, y0, x1, y1), v in ((GLAND, 230), (LUMEN, 20), (SQUARE, 230)):
        prob[y0:y1, x0:x1] = v
    return prob


def gland_polygon() -> shapely.Polygon:
    return box(*GLAND).difference(box(*LUMEN))


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> tuple[Path, Path]:
    """A regions model folder (untrained width-8 net) and the synthetic slide at its pixel size."""
    d = tmp_path_factory.mktemp("region-pictures")
    torch.manual_seed(0)
    card = ModelCard(name="planted-regions", architecture="resnet34-unet", model_type=REGIONS, mpp=MPP,
                     arch_kwargs={"width": 8}, heads=["region"], classes=[{"name": "Gland", "color": list(COLOUR)}],
                     thresholds={"region": 0.5, "min_region_area_um2": 40.0}, tile_size=64, context_px=32,
                     trained=False, description="test: its map is replaced by a planted one")
    model = save_model(d / "model", card, ResNet34UNet(out_channels=1, width=8))
    rgb, _ = synthetic_he(size=SHAPE, mpp=MPP, seed=3)
    return model, write_pyramid_tiff(d / "glands.tiff", rgb, MPP, levels=1, tile=64)


@pytest.fixture
def run_planted(stub, monkeypatch):
    """``run(out, **options)``: ``segment`` of the slide with the planted map in place of the network's."""
    model, slide = stub

    def infer_maps(model, view, plan, out, opts, partial=None, on_tiles=None) -> str:
        out[0] = planted()
        if on_tiles is not None:
            on_tiles(list(plan.tiles))
        return "cpu"

    monkeypatch.setattr(segment_module, "infer_maps", infer_maps)
    monkeypatch.setattr(pictures, "PREVIEW_MAX_SIDE", 160)  # a thumbnail at 4 µm/px: half the working grid

    def run(out: Path, **options):
        res = segment(slide, out, model, SegmentOptions(tissue="all", progress=False, **options))
        return res, json.loads(res.run_json.read_text())

    return run


def test_preview_outlines_are_the_boundary_of_the_regions_downscaled_to_it(stub, run_planted, tmp_path):
    res, run = run_planted(tmp_path / "a")
    pv = run["pictures"]["preview"]
    assert [p.name for p in res.pictures] == run["pictures"]["files"] == ["glands.preview.png"]
    assert pv["thumbnail_shape"] == [128, 160] and pv["thumbnail_mpp"] == 4.0
    png = np.asarray(Image.open(res.pictures[0]).convert("RGB"))
    (x0, y0), (th, tw) = pv["image_origin_px"], pv["thumbnail_shape"]
    img = png[y0 : y0 + th, x0 : x0 + tw].astype(int)
    # oracle: the known shapes tested at the thumbnail's pixel centres (working px 2j + 1, 2i + 1)
    xs, ys = np.meshgrid(2 * np.arange(tw) + 1.0, 2 * np.arange(th) + 1.0)
    mask = shapely.contains_xy(gland_polygon(), xs, ys) | shapely.contains_xy(box(*SQUARE), xs, ys)
    edge = outline_mask(mask.astype(np.int32))
    drawn = (img == COLOUR).all(-1)
    assert edge.sum() > 300 and np.array_equal(drawn, edge)  # holes too: the lumen's rim is in edge
    with open_slide(stub[1]) as s:
        thumb = WorkingView(s, 4.0).read(0, 0, th, tw).astype(float)
    fill = mask & ~edge  # the class colour blended over the thumbnail, or over the tissue outline drawn under it

    def blend(rgb):
        return np.round(rgb * (1 - FILL_ALPHA) + np.multiply(COLOUR, FILL_ALPHA))

    on_thumb = (img[fill] == blend(thumb[fill])).all(-1)
    assert on_thumb.mean() > 0.95 and (img[fill][~on_thumb] == blend(np.array(TISSUE_COLOUR, float))).all()
    # every outline pixel (2 x 2 working px) touches a region's boundary
    boundary = shapely.union(gland_polygon().boundary, box(*SQUARE).boundary)
    r, c = np.nonzero(drawn)
    assert shapely.distance(boundary, shapely.points(2 * c + 1.0, 2 * r + 1.0)).max() <= np.sqrt(2)
    assert (png[:y0] != 255).any(axis=(0, 2)).sum() > 10  # a title above
    assert (png[y0 : y0 + th, x0 + tw + 12 :] != 255).any()  # the legend beside


def test_preview_is_byte_identical_between_runs_and_overlays_sit_on_region_boundaries(stub, run_planted, tmp_path):
    a, run = run_planted(tmp_path / "a", overlays=3)
    b, _ = run_planted(tmp_path / "b", overlays=3)
    assert [p.name for p in a.pictures] == ["glands.preview.png"] + [f"glands.overlay-{k}.png" for k in (1, 2, 3)]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a.pictures, b.pictures))
    overlays = run["pictures"]["overlays"]
    assert overlays[0]["outline_px"] >= overlays[1]["outline_px"] >= overlays[2]["outline_px"] > 0
    labels = zarr.open_group(a.zarr, mode="r")["labels/regions/0"][:]
    with open_slide(stub[1]) as s:
        view = WorkingView(s, MPP)
        for o in overlays:
            y, x, h, w = o["working_box"]
            png = np.asarray(Image.open(a.zarr.parent / o["file"]).convert("RGB"))
            np.testing.assert_array_equal(png, region_composite(view.read(y, x, h, w), labels[y:y + h, x:x + w],
                                                                COLOUR))
            assert outline_mask(labels[y:y + h, x:x + w]).any()


def test_outline_pixels_by_stripes_are_the_whole_images_outline(monkeypatch):
    from wsi_weakseg.engine import region_pictures

    labels = np.zeros(SHAPE, np.int32)
    for k, (x0, y0, x1, y1) in enumerate((GLAND, LUMEN, SQUARE), start=1):
        labels[y0:y1, x0:x1] = k % 2 and k
    monkeypatch.setattr(region_pictures, "_ROWS", 7)
    r, c = outline_pixels(labels)
    edge = np.zeros(SHAPE, bool)
    edge[r, c] = True
    assert np.array_equal(edge, outline_mask(labels)) and len(r) == edge.sum()


def test_roi_label_image_is_zero_outside_it_and_its_ids_are_the_annotations_labels(run_planted, tmp_path):
    # cuts the gland and its lumen slantwise (x + y = 270.25: no pixel centre on it, crossings at 2 decimals as
    # written in the GeoJSON), misses the square
    roi = shapely.Polygon([(40, 20), (250.25, 20), (40, 230.25)])
    path = tmp_path / "roi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": roi.__geo_interface__, "properties": {"objectType": "annotation"}}]}))
    res, run = run_planted(tmp_path / "out", roi=str(path), preview=False)
    labels = zarr.open_group(res.zarr, mode="r")["labels/regions/0"][:]
    ys, xs = np.mgrid[: SHAPE[0], : SHAPE[1]] + 0.5  # level-0 px = working px here
    assert not labels[~shapely.contains_xy(roi, xs, ys)].any()
    assert np.array_equal(labels > 0, shapely.contains_xy(gland_polygon().intersection(roi), xs, ys))
    features = read_features(res.geojson)
    ids = {f["properties"]["measurements"]["Label"] for f in features}
    assert ids == set(np.unique(labels[labels > 0]).tolist()) == {1} and run["regions"]["count"] == 1
    for f in features:
        k = f["properties"]["measurements"]["Label"]
        assert np.array_equal(shapely.contains_xy(shape(f["geometry"]), xs, ys), labels == k)
    assert run["pictures"] == {}
