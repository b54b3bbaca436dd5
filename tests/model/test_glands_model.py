"""The packaged gland model (issue 18): a regions card, fp16 weights, and card metrics that reproduce from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wsi_weakseg.model.card import PACKAGED, REGIONS, available_models, load_model

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "configs" / "data" / "glas-split.yaml"  # the committed 54 / 14 / 17 split of GlaS train
NAME = "glands-points-v1"


def test_glands_model_is_a_packaged_regions_model_with_research_licence():
    assert NAME in available_models()
    model = load_model(NAME)  # checks the weights' sha256 against the card
    card = model.card
    assert card.model_type == REGIONS and card.trained and card.heads == ["region"] and card.activation == "sigmoid"
    assert card.classes[0]["name"] == "Gland" and card.mpp == 2.5 and card.context_px == 256
    assert "Research use only" in card.license and "GlaS" in card.license
    state = torch.load(PACKAGED / NAME / card.weights, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert (PACKAGED / NAME / card.weights).stat().st_size <= 60 * 2**20
    text = json.dumps(card.training)
    assert card.training["recipe"] == "regions" and card.training["n_train"] == 54 and "/work/" not in text
    optim, regions = card.training["config"]["optim"], card.training["config"]["regions"]  # the committed arm's
    assert (optim["lr"], optim["lr_schedule"], optim["epochs"], regions["loss"]) == (2e-4, "cosine", 120, "pce")
    assert card.training["config"]["data"]["mpp"] == 2.5 and card.training["thresholds_tuning"]["path"].endswith("(segment)")
    assert card.training["config"]["data"]["spec"] == "runs/glas-points/5pairs/spec.yaml"
    metrics = card.metrics
    assert metrics["n"] == 14 and metrics["test"]["n"] == 17
    # better than calling every pixel gland, on validation and on the held-out test split
    assert metrics["mean"]["dice"] > metrics["all_target_dice"] + 0.05
    assert metrics["test"]["mean"]["dice"] > metrics["test"]["all_target_dice"] + 0.05


@pytest.mark.parametrize("split", ["validation", "test"])
def test_card_metrics_reproduce_from_the_shipped_weights(shared_data, tmp_path, split):
    """Scoring the packaged weights on the committed split gives the card's numbers (float16 weights, CPU)."""
    from wsi_weakseg.train.region_items import build_region_eval_items
    from wsi_weakseg.train.region_validate import validate_regions
    from wsi_weakseg.weak.spec import load_spec

    spec = tmp_path / "spec.yaml"  # the committed split, pointed at wherever the data is
    spec.write_text(SPEC.read_text().replace("../../../shared/data", str(shared_data)))
    model = load_model(NAME)
    expected = model.card.metrics if split == "validation" else model.card.metrics["test"]
    items = build_region_eval_items(load_spec(spec).split(split),
                                    {"data": {"mpp": model.card.mpp}, "regions": model.card.training["config"]["regions"]})
    mean = validate_regions(model.net, model.card, items)["mean"]
    for key in ("dice", "iou", "object_dice"):
        assert mean[key] == pytest.approx(expected["mean"][key], abs=5e-3)


def test_native_scoring_is_what_segment_writes(shared_data, tmp_path):
    """``evaluate_regions.py --native`` scores on the image's own grid exactly what `segment` writes: its region label
    map brought to level 0 (each level-0 pixel takes the working pixel under its centre) gives the script's numbers,
    and the written gland annotations, rasterised at level-0 pixel centres, cover those same pixels except where a
    centre lies within GeoJSON's coordinate rounding (0.005 level-0 px) of a working-pixel edge."""
    import runpy

    import numpy as np
    import shapely
    import yaml
    import zarr
    from PIL import Image

    from wsi_weakseg.engine.segment import SegmentOptions, segment
    from wsi_weakseg.evaluate.regions import evaluate_regions, labels_at_level0
    from wsi_weakseg.io.geojson import read_features

    items = [it for it in yaml.safe_load(SPEC.read_text())["items"] if it["split"] == "validation"][:2]
    items = [{**it, "image": it["image"].replace("../../../shared/data", str(shared_data)),
              "labels": it["labels"].replace("../../../shared/data", str(shared_data)), "split": "test"} for it in items]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"defaults": {"mpp": 0.62}, "items": items}))
    script = runpy.run_path(str(REPO / "scripts" / "evaluate_regions.py"))
    assert script["main"]([NAME, str(spec), "--split", "test", "--native", "--out", str(tmp_path / "n.json")]) == 0
    rows = json.loads((tmp_path / "n.json").read_text())["images"]
    scale = load_model(NAME).card.mpp / 0.62  # working pixel in level-0 pixels
    for it, row in zip(items, rows, strict=True):
        mask = np.asarray(Image.open(it["labels"])) > 0
        out = tmp_path / row["name"]
        segment(it["image"], out, NAME, SegmentOptions(device="cpu", mpp=0.62, progress=False, preview=False,
                                                       num_workers=1))
        written = np.asarray(zarr.open_group(str(out / f"{row['name']}.ome.zarr"), mode="r")["labels/regions/0"]) > 0
        up = labels_at_level0(written, mask.shape, scale)
        scores = evaluate_regions(up, mask)
        assert 0.5 < scores["dice"] < 1.0 and {k: row[k] for k in scores} == scores
        glands = shapely.union_all([shapely.geometry.shape(f["geometry"])
                                    for f in read_features(out / f"{row['name']}.geojson")])
        yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]] + 0.5
        drawn = shapely.contains_xy(glands, xx.ravel(), yy.ravel()).reshape(mask.shape)
        ys, xs = np.nonzero(drawn != up)
        near = lambda c: np.abs((c + 0.5) / scale - np.round((c + 0.5) / scale)) * scale <= 0.0051
        assert (near(xs) | near(ys)).all() and ys.size < 0.01 * mask.size
