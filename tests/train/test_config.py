"""Training config layering: packaged defaults < user YAML < overrides; unknown keys named."""

from __future__ import annotations

import pytest
import yaml

from wsi_weakseg.errors import ConfigError
from wsi_weakseg.train.config import load_config, packaged_defaults


def test_defaults_hold_the_papers_values():
    cfg = load_config()
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["weight_decay"] == 5e-4
    assert cfg["points"]["eta"] == 1.0 and cfg["points"]["epsilon"] == 0.1 and cfg["points"]["gamma_epochs"] == 3
    assert (cfg["data"]["patch"], cfg["data"]["crop"]) == (250, 224)


def test_user_file_layers_over_defaults_and_resolves_spec(tmp_path):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"data": {"spec": "spec.yaml"}, "optim": {"epochs": 5}}))
    cfg = load_config(tmp_path / "cfg.yaml", overrides={"seed": 7})
    assert cfg["optim"]["epochs"] == 5 and cfg["optim"]["lr"] == 1e-3 and cfg["seed"] == 7
    assert cfg["data"]["spec"] == str(tmp_path / "spec.yaml")
    assert packaged_defaults()["optim"]["epochs"] == 60  # defaults untouched


@pytest.mark.parametrize(
    "user, match",
    [
        ({"optim": {"learning_rate": 1}}, "optim.learning_rate"),
        ({"colour": 1}, "'colour'"),
        ({"optim": 3}, "must be a mapping"),
        ({"optim": {"epochs": 0}}, "optim.epochs"),
        ({"optim": {"lr": -1.0}}, "optim.lr"),
        ({"data": {"crop": 300}}, "data.crop"),
        ({"data": {"metric": "dice"}}, "data.metric"),
        ({"data": {"crop": 100, "patch": 128}}, "data.crop"),
        ({"recipe": "lacss"}, "unknown recipe"),
        ({"optim": {"lr_schedule": "linear"}}, "optim.lr_schedule"),
        ({"points": {"ramp_epochs": 0}}, "points.ramp_epochs"),
        ({"points": {"cluster_colour": "hsv"}}, "points.cluster_colour"),
        ({"points": {"cluster_ring_um": -1}}, "points.cluster_ring_um"),
        ({"augment": {"stain": 1.0}}, "augment.stain"),
        ({"augment": {"stain": "strong"}}, "augment.stain"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, user, match):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(user))
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "cfg.yaml")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_example_config_matches_packaged_defaults():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    assert yaml.safe_load((repo / "configs" / "train-points.yaml").read_text()) == packaged_defaults()
