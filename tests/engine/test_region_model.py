"""``segment`` with a regions model: a tiny real ResNet34-UNet (width 8, one head) through the real engine.

The net is fitted for 40 steps to a tissue-vs-glass target on a synthetic H&E image at 2 µm/px, so its map
varies across the slide (an untrained net's map is flat within 1/255); its context is measured (tiled vs whole
within 0.01) and stored in its card, as for any model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import shapely.affinity
import torch
import zarr
from shapely.geometry import shape

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.inference import Predictor, predict_image
from wsi_weakseg.engine.region_polygons import region_labels, region_params
from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.io.geojson import read_features
from wsi_weakseg.io.omezarr import validate_ome_zarr
from wsi_weakseg.model.card import REGIONS, ModelCard, load_model, save_model
from wsi_weakseg.model.context import compare_context, measure_context
from wsi_weakseg.model.fit import fit_dense
from wsi_weakseg.model.resnet_unet import ResNet34UNet
from wsi_weakseg.slide.testing import write_pyramid_tiff

MPP = 2.0
TOLERANCE = 0.01  # the context measurement's tolerance on max |tiled - whole| probability


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rgb, _ = synthetic_he(size=(256, 320), mpp=MPP, seed=3)
    return rgb


@pytest.fixture(scope="module")
def regions_model(image, tmp_path_factory) -> Path:
    torch.manual_seed(1)
    card = ModelCard(name="tiny-regions", architecture="resnet34-unet", model_type=REGIONS, mpp=MPP,
                     arch_kwargs={"width": 8}, heads=["region"], classes=[{"name": "Gland", "color": [20, 160, 60]}],
                     thresholds={"region": 0.5, "min_region_area_um2": 40.0}, tile_size=64, context_px=32,
                     trained=False, description="test: width-8 net fitted 40 steps to tissue vs glass")
    target = (image.astype(np.float32).mean(-1) < 200).astype(np.float32)[None]
    net = fit_dense(ResNet34UNet(out_channels=1, width=8), [image], [target], card.normalization, steps=40, crop=96,
                    seed=1)
    card.context_px, _ = measure_context(Predictor(net, card, "cpu"), [image], tile=64, tolerance=TOLERANCE,
                                         candidates=(64, 96, 128, 160, 192))
    return save_model(tmp_path_factory.mktemp("regions-model"), card, net)


@pytest.fixture(scope="module")
def tiled_run(image, regions_model, tmp_path_factory):
    """``segment`` of the image as a slide at the card's tile (64 px: 20 tiles, seams every 128 µm)."""
    d = tmp_path_factory.mktemp("regions-run")
    slide = write_pyramid_tiff(d / "glands.tiff", image, MPP, levels=1, tile=64)
    res = segment(slide, d / "out", regions_model, SegmentOptions(tissue="all", progress=False, preview=False))
    return res, json.loads(res.run_json.read_text())


def test_tiled_map_equals_the_whole_image_map_within_the_measured_tolerance(image, regions_model, tiled_run):
    model = load_model(regions_model)
    predictor = Predictor(model.net, model.card, "cpu")
    whole = predict_image(predictor, image, context=256)
    tiled = zarr.open_array(tiled_run[0].zarr / "0")[0]
    measured = compare_context(predictor, [image], 64, model.card.context_px).max_abs
    diff = np.abs(tiled.astype(np.int16) - whole[0].astype(np.int16)) / 255.0
    # maps are uint8: a float difference of ~1e-7 (thread count changes float sums) can flip one rounding level
    # beyond what the measurement saw, so the bound is the measured difference plus one level (seen in CI: 2/255)
    assert measured <= TOLERANCE and diff.max() <= measured + 1 / 255 + 1e-9
    assert whole.min() < 110 and whole.max() > 200  # a varying map: the seams could show
    # the thresholded masks agree exactly wherever the whole-image probability is not within tolerance of 0.5
    far = np.abs(whole[0] / 255.0 - 0.5) > measured + 1 / 255
    level = region_params(model.card, MPP).level
    assert far.mean() > 0.9 and ((whole[0] >= level) == (tiled >= level))[far].all()


def test_regions_run_writes_annotations_labels_and_areas(image, regions_model, tiled_run):
    res, run = tiled_run
    labels = zarr.open_array(res.zarr / "labels" / "regions" / "0")[:]
    expected, n = region_labels(zarr.open_array(res.zarr / "0")[0], region_params(load_model(regions_model).card, MPP))
    assert np.array_equal(labels, expected) and n >= 1 and res.n_regions == n == run["regions"]["count"]
    assert run["regions"]["area_mm2_by_class"]["Gland"] == pytest.approx((labels > 0).sum() * MPP**2 / 1e6)
    assert validate_ome_zarr(res.zarr) == []
    root = zarr.open_group(res.zarr, mode="r")
    assert root["0"].dtype == np.uint8 and root.attrs["ome"]["omero"]["channels"][0]["label"] == "region"
    assert root["labels"].attrs["ome"]["labels"] == ["regions"]
    features = read_features(res.geojson)
    assert {f["properties"]["objectType"] for f in features} == {"annotation"}
    assert {(f["properties"]["classification"]["name"], tuple(f["properties"]["classification"]["color"]))
            for f in features} == {("Gland", (20, 160, 60))}
    # level-0 pixels = working pixels here (the slide is at the model's mpp): each polygon is its label's pixels
    ys, xs = np.mgrid[: labels.shape[0], : labels.shape[1]] + 0.5
    for f in features:
        poly = shape(f["geometry"])
        assert poly.is_valid
        inside = shapely.contains_xy(poly, xs, ys)
        assert np.array_equal(inside, labels == f["properties"]["measurements"]["Label"])


def test_a_slide_scanned_finer_gives_the_same_regions_in_its_level0_pixels(image, regions_model, tiled_run, tmp_path):
    """The image at 0.5 µm/px (each pixel 4x4) with a 3-level pyramid: level 2 is the 2 µm/px image itself, read
    directly, so the regions are the same and every GeoJSON coordinate is 4x the 2 µm/px run's."""
    fine = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
    slide = write_pyramid_tiff(tmp_path / "glands.tiff", fine, MPP / 4, levels=3, tile=256)
    res = segment(slide, tmp_path / "out", regions_model, SegmentOptions(tissue="all", progress=False, preview=False))
    run = json.loads(res.run_json.read_text())
    assert run["working"]["scale"] == 4.0 and not run["working"]["resampled"]
    assert run["regions"] == tiled_run[1]["regions"]
    coarse = [shape(f["geometry"]) for f in read_features(tiled_run[0].geojson)]
    scaled = [shape(f["geometry"]) for f in read_features(res.geojson)]
    assert len(scaled) == len(coarse)
    for a, b in zip(coarse, scaled):
        assert shapely.equals_exact(shapely.affinity.scale(a, 4, 4, origin=(0, 0)), b, tolerance=1e-9)


def test_a_regions_run_is_a_valid_regions_file_for_nuclei(tiled_run):
    """Its GeoJSON is what ``segment --regions`` reads: one class whose area is the regions' pixels."""
    from wsi_weakseg.io.region_annotations import read_region_annotations

    res, run = tiled_run
    areas = read_region_annotations(res.geojson)
    assert list(areas) == ["Gland"]
    assert areas["Gland"].area * MPP**2 / 1e6 == pytest.approx(run["regions"]["area_mm2_by_class"]["Gland"])


def test_an_interrupted_regions_run_resumes_from_its_journalled_tiles(image, regions_model, tiled_run, tmp_path,
                                                                      monkeypatch):
    """A failure after inference keeps the working folder; the rerun reuses every tile and writes the same bytes."""
    from wsi_weakseg.engine import region_model
    from wsi_weakseg.errors import ProcessingError

    slide = write_pyramid_tiff(tmp_path / "glands.tiff", image, MPP, levels=1, tile=64)  # same content, same ids
    opts = SegmentOptions(tissue="all", progress=False, preview=False)

    def fail(*args, **kwargs):
        raise ProcessingError("killed after inference")

    with monkeypatch.context() as m:
        m.setattr(region_model, "stitched_regions", fail)
        with pytest.raises(ProcessingError):
            segment(slide, tmp_path / "out", regions_model, opts)
    res = segment(slide, tmp_path / "out", regions_model, opts)
    run = json.loads(res.run_json.read_text())
    assert run["resumed"]["tiles_reused"] == run["tiles"]["processed"] == 20
    assert res.geojson.read_bytes() == tiled_run[0].geojson.read_bytes()
