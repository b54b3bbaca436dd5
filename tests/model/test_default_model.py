"""The packaged default model: trained from points, fp16 weights within budget, and a card whose metrics reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_weakseg.model.card import BASELINE_MODEL, DEFAULT_MODEL, PACKAGED, available_models, load_model

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "configs" / "data" / "points-monuseg-crc-v2.yaml"  # the default model's train/validation/test
CLASSICAL_FLOOR_AJI = 0.464  # benchmarks/classical_floor.py on v1's validation = v2's test split (docs/training.md)
V1 = "nuclei-points-v1"


def test_default_is_a_trained_points_model_with_its_card():
    assert DEFAULT_MODEL != BASELINE_MODEL and {DEFAULT_MODEL, BASELINE_MODEL} <= set(available_models())
    model = load_model(DEFAULT_MODEL)  # checks the weights' sha256 against the card
    card = model.card
    assert card.trained and card.architecture == "resnet34-unet" and card.mpp == 0.5
    assert card.tile_size % 32 == 0 and card.context_px % 32 == 0 and card.context_px > 0
    assert "non-commercial" in card.license and "MoNuSeg" in card.license
    weights = PACKAGED / DEFAULT_MODEL / card.weights
    assert weights.stat().st_size <= 60 * 2**20
    state = torch.load(weights, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert all(p.dtype == torch.float32 for p in model.net.parameters())
    # provenance: the training items and recipe, no paths of the machine it was trained on
    text = json.dumps(card.training)
    assert card.training["recipe"] == "points" and card.training["n_train"] >= 75
    assert "/work/" not in text and "monuseg-train/images/" in text
    assert card.training["packaging"]["weights"] == "float16"
    native, test = card.metrics["native"], card.metrics["test"]
    assert native["monuseg"]["n"] == 5 and native["crc_f1_6px"]["n"] == 10
    assert test["monuseg"]["n"] == 6 and test["crc_f1_6px"]["n"] == 10
    assert test["monuseg"]["aji"] > CLASSICAL_FLOOR_AJI
    # v2 must beat the model it replaced on the split v2 never saw (v1's own validation split)
    v1 = load_model(V1).card.metrics["native"]
    assert test["monuseg"]["aji"] > v1["monuseg"]["aji"] and test["crc_f1_6px"]["f1"] > v1["crc_f1_6px"]["f1"]


def test_previous_default_stays_loadable_by_name():
    model = load_model(V1)
    assert model.card.trained and model.card.name == V1 and V1 != DEFAULT_MODEL


@pytest.mark.parametrize("split, key, n_monuseg", [("validation", "native", 5), ("test", "test", 6)])
def test_card_metrics_reproduce_from_the_shipped_weights(shared_data, tmp_path, split, key, n_monuseg):
    """``wsi-weakseg evaluate`` of the packaged model on the committed validation and test splits gives the card's numbers."""
    from wsi_weakseg.evaluate import evaluate_model

    spec = tmp_path / "spec.yaml"  # the committed spec, pointed at wherever the data is
    spec.write_text(SPEC.read_text().replace("../../../shared/data", str(shared_data)))
    card = load_model(DEFAULT_MODEL).card
    report = evaluate_model(spec, model=DEFAULT_MODEL, split=split, device="cpu", radius_px=6.0)
    monuseg = [r for r in report["images"] if r["name"].startswith("TCGA")]
    crc = [r for r in report["images"] if r["name"].startswith("img")]
    assert len(monuseg) == n_monuseg and len(crc) == 10
    expected = card.metrics[key]
    # a few 1e-3 of slack: CPU kernels differ between machines in the last float bits
    assert np.mean([r["aji"] for r in monuseg]) == pytest.approx(expected["monuseg"]["aji"], abs=5e-3)
    assert np.mean([r["pq"] for r in monuseg]) == pytest.approx(expected["monuseg"]["pq"], abs=5e-3)
    assert np.mean([r["f1"] for r in crc]) == pytest.approx(expected["crc_f1_6px"]["f1"], abs=5e-3)
