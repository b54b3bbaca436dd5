"""The ``regions`` model card: what it must hold, what it refuses, and how it builds its net."""

from __future__ import annotations

import pytest
import torch

from wsi_weakseg.errors import ModelCardError
from wsi_weakseg.model.card import (
    MODEL_TYPES,
    REGIONS,
    ModelCard,
    build_net,
    load_model,
    save_model,
)
from wsi_weakseg.model.region_card import region_thresholds


def regions_card(**changes) -> ModelCard:
    """A valid regions card (the contract with the training side), with ``changes``."""
    fields = {"name": "glands", "architecture": "resnet34-unet", "model_type": REGIONS, "mpp": 2.0,
              "arch_kwargs": {"width": 8}, "heads": ["region"], "activation": "sigmoid",
              "classes": [{"name": "Gland", "color": [20, 160, 60]}],
              "thresholds": {"region": 0.5, "min_region_area_um2": 500.0}, "tile_size": 64, "context_px": 32,
              "trained": False}
    return ModelCard(**(fields | changes))


def test_regions_is_the_third_model_type():
    assert MODEL_TYPES == ("dense-maps", "detect-segment", "regions")


def test_valid_regions_card_builds_a_one_head_net_and_round_trips(tmp_path):
    card = regions_card()
    net = build_net(card)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    loaded = load_model(save_model(tmp_path / "m", card, net))
    assert loaded.card == card
    assert region_thresholds(loaded.card) == {"region": 0.5, "min_region_area_um2": 500.0, "min_hole_area_um2": 0.0,
                                              "simplify_um": 0.0}


@pytest.mark.parametrize(("changes", "match"), [
    ({"architecture": "lacss"}, "lacss"),
    ({"architecture": "hematoxylin-baseline"}, "needs architecture 'resnet34-unet'"),
    ({"window_um": 24.0}, "window_um"),
    ({"heads": ["foreground", "centre"]}, "heads"),
    ({"classes": [{"name": "A", "color": [1, 2, 3]}, {"name": "B", "color": [1, 2, 3]}]}, "one class"),
    ({"thresholds": {"region": 0.5}}, "lack .'min_region_area_um2'"),
    ({"thresholds": {"region": 1.0, "min_region_area_um2": 5}}, "probability"),
    ({"thresholds": {"region": 0.5, "min_region_area_um2": -1}}, "min_region_area_um2 must be"),
    ({"thresholds": {"region": 0.5, "min_region_area_um2": 1, "simplify_um": float("nan")}}, "simplify_um"),
])
def test_bad_regions_cards_are_refused(changes, match):
    with pytest.raises(ModelCardError, match=match):
        regions_card(**changes)


def test_a_nucleus_card_still_needs_its_own_heads_and_thresholds():
    with pytest.raises(ModelCardError, match="heads must start"):
        ModelCard(name="n", architecture="resnet34-unet", mpp=0.5, heads=["region"])


def test_nucleus_scoring_paths_refuse_a_regions_model_with_a_typed_error():
    from wsi_weakseg.engine.instances import params_from_card
    from wsi_weakseg.errors import ConfigError

    with pytest.raises(ConfigError, match="regions model"):
        params_from_card(regions_card(), 2.0)
