"""The one in-memory model path (``engine.whole``) that evaluate, validation and tuning share, and its RAM guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine import whole
from wsi_weakseg.engine.inference import Predictor, predict_image, predict_tiles, tile_origins
from wsi_weakseg.engine.instances import label_image, params_from_card
from wsi_weakseg.errors import ConfigError, UnsupportedFormatError
from wsi_weakseg.evaluate.metrics import evaluate_instances
from wsi_weakseg.model.card import BASELINE_MODEL, ModelCard, load_model
from wsi_weakseg.model.resnet_unet import ResNet34UNet
from wsi_weakseg.slide import WorkingView
from wsi_weakseg.slide.reader import ImageSlide
from wsi_weakseg.train.dataset import EvalItem


@pytest.fixture(scope="module")
def tiny() -> Predictor:
    """A random width-8 ResNet34-UNet whose card context (64) is more than the old hard-coded 32."""
    torch.manual_seed(0)
    card = ModelCard(name="tiny", architecture="resnet34-unet", mpp=0.5, arch_kwargs={"width": 8}, tile_size=64,
                     context_px=64, trained=False, description="test: random width-8 net")
    net = ResNet34UNet(out_channels=2, width=8)
    rgb, _ = synthetic_he((128, 128), mpp=0.5, seed=9)
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - 0.45) / 0.23
    for m in net.modules():  # batch-norm statistics of H&E-like input, so that the maps vary with the image
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(x)
    return Predictor(net, card, "cpu")


def test_maps_are_segments_tiles_with_the_card_context(tiny):
    rgb, _ = synthetic_he((96, 160), mpp=0.5, seed=0)
    maps = whole.predict_maps(tiny, rgb)
    expected = np.zeros_like(maps)
    predict_tiles(tiny, lambda y, x, h, w: rgb[y : y + h, x : x + w], (96, 160), expected,
                  tile_origins((96, 160), 64), 64, 64)
    np.testing.assert_array_equal(maps, expected)
    assert maps.std() > 1
    # an image of one tile: one forward pass of the image reflected by the card's context, not by 32 px
    one = rgb[:64, :64]
    np.testing.assert_array_equal(whole.predict_maps(tiny, one), predict_image(tiny, one, 64))
    assert not np.array_equal(whole.predict_maps(tiny, one), predict_image(tiny, one, 32))


def test_validate_and_tune_score_predict_instances(monkeypatch):
    from wsi_weakseg.train import tune, validate

    model = load_model(BASELINE_MODEL)
    rgb, _ = synthetic_he((128, 192), mpp=0.5, seed=3)
    predictor = Predictor(model.net, model.card, "cpu")
    labels = whole.predict_instances(predictor, rgb)
    assert labels.max() > 3
    np.testing.assert_array_equal(labels, label_image(whole.predict_maps(predictor, rgb),
                                                      params_from_card(model.card, model.card.mpp)))
    gt = np.roll(labels, 1, axis=1)
    item = EvalItem("s", rgb, np.zeros((0, 2)), gt)
    row = validate.validate(model.net, model.card, [item], 3.0)["images"][0]
    assert row["aji"] == evaluate_instances(labels, gt, radius_px=6.0)["aji"]
    calls = []
    monkeypatch.setattr(tune, "predict_maps", lambda p, image: calls.append(image) or whole.predict_maps(p, image))
    _, table = tune.tune_thresholds(model.net, model.card, [item], "aji", 3.0, foreground=(), centre=())
    assert len(calls) == 1 and table[0]["aji"] == row["aji"]


def test_covering_pixels_follow_the_views_level0_mapping():
    view = WorkingView(ImageSlide(np.zeros((10, 9, 3), np.uint8), mpp=0.2), 0.5)  # resampled: scale 2.5
    assert view.scale == pytest.approx(2.5) and view.shape == (4, 3)
    # level-0 centres 0.5, 1.5, ...; working pixel x covers [2.5 x, 2.5 (x + 1)): a centre on an edge (2.5) belongs
    # to the pixel that starts there; centres from 7.5 on lie past the 3 working columns
    np.testing.assert_array_equal(whole.covering_pixels(view, 0, 9, 0), [0, 0, 1, 1, 1, 2, 2, -1, -1])
    np.testing.assert_array_equal(whole.covering_pixels(view, -1, 11, 1), [-1, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, -1])


def _spec(tmp_path: Path, shape=(96, 128)) -> Path:
    rgb, _ = synthetic_he(shape, mpp=0.5, seed=1)
    img = tmp_path / "img.png"
    Image.fromarray(rgb).save(img)
    pts = tmp_path / "img.geojson"
    pts.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[10.5, 10.5], [40.5, 30.5]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Nucleus", "color": [0, 0, 0]}}}]}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"defaults": {"mpp": 0.5}, "items": [{"image": str(img), "points": str(pts),
                                                                      "split": "validation"}]}))
    return spec


def _no_reading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pixels were read before the size check")

    monkeypatch.setattr(WorkingView, "read", refuse)


def test_evaluate_refuses_a_region_over_the_limit_before_reading(tmp_path, monkeypatch):
    from wsi_weakseg.evaluate import evaluate_model

    spec = _spec(tmp_path)
    model = load_model(BASELINE_MODEL)
    assert evaluate_model(spec, model=model, device="cpu")["images"][0]["n_pred"] >= 0  # 96x128 px fits
    monkeypatch.setattr(whole, "MAX_REGION_PIXELS", 96 * 128 - 1)
    _no_reading(monkeypatch)
    with pytest.raises(ConfigError, match=r"128x96 level-0 px region is over the 12,287-pixel .*wsi-weakseg segment"):
        evaluate_model(spec, model=model, device="cpu")


def test_evaluate_counts_the_working_window_too(monkeypatch):
    slide = ImageSlide(np.full((40, 50, 3), 230, np.uint8), mpp=1.0)  # working 0.5 µm/px: 100x80 px
    model = load_model(BASELINE_MODEL)
    monkeypatch.setattr(whole, "MAX_REGION_PIXELS", 100 * 80)
    labels, _ = whole.predict_level0(slide, model)  # at the limit
    assert labels.shape == (40, 50)
    monkeypatch.setattr(whole, "MAX_REGION_PIXELS", 100 * 80 - 1)  # the 2000 level-0 px pass, the window does not
    _no_reading(monkeypatch)
    with pytest.raises(ConfigError, match="100x80 working px region"):
        whole.predict_level0(slide, model)


def test_training_reader_refuses_a_region_over_the_limit(tmp_path, monkeypatch):
    from wsi_weakseg.train.dataset import read_item
    from wsi_weakseg.weak.spec import load_spec

    item = load_spec(_spec(tmp_path)).items[0]
    assert read_item(item, 0.5).image.shape == (96, 128, 3)
    monkeypatch.setattr(whole, "MAX_REGION_PIXELS", 1000)
    _no_reading(monkeypatch)
    with pytest.raises(ConfigError, match=r"128x96 working px region .*annotate smaller regions.*wsi-weakseg segment"):
        read_item(item, 0.5)


def test_training_reader_uses_the_one_label_map_reader(tmp_path):
    from wsi_weakseg.train.dataset import read_item
    from wsi_weakseg.weak.spec import load_spec

    spec = _spec(tmp_path)
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(tmp_path / "rgb_labels.png")  # RGB: not a label map
    data = json.loads(spec.read_text())
    data["items"][0]["labels"] = str(tmp_path / "rgb_labels.png")
    spec.write_text(json.dumps(data))
    with pytest.raises(UnsupportedFormatError, match="not an instance label map"):
        read_item(load_spec(spec).items[0], 0.5)
    labels = np.zeros((96, 128), np.uint16)
    labels[10:20, 30:40] = 300
    np.save(tmp_path / "labels.npy", labels)
    data["items"][0]["labels"] = str(tmp_path / "labels.npy")
    spec.write_text(json.dumps(data))
    np.testing.assert_array_equal(read_item(load_spec(spec).items[0], 0.5).labels, labels)
    np.save(tmp_path / "labels.npy", labels[:-1])
    with pytest.raises(ConfigError, match="must share the pixel grid"):
        read_item(load_spec(spec).items[0], 0.5)
