"""The regions recipe (issue 18): items from GlaS with simulated points, u, a real short run, exact resume, the card."""

from __future__ import annotations

import dataclasses
import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _resume import straight_and_resumed
from PIL import Image

from wsi_weakseg.errors import ConfigError
from wsi_weakseg.model.card import REGIONS, load_model
from wsi_weakseg.train.checkpoint import load_checkpoint, save_checkpoint
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.loop import run
from wsi_weakseg.train.region_items import build_region_eval_items, build_region_items
from wsi_weakseg.train.regions_recipe import NET, RegionsRecipe
from wsi_weakseg.train.trainer import train
from wsi_weakseg.weak.region_points import simulate_region_points, write_region_points
from wsi_weakseg.weak.spec import load_spec

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
NAMES = ("train_1", "train_2", "train_3")  # the last is the validation item


@pytest.fixture(scope="module")
def glas_spec(shared_data, tmp_path_factory):
    """A spec of three GlaS images with 3 simulated point pairs each (seed 0); the third is validation."""
    root, out = shared_data / "glas-train", tmp_path_factory.mktemp("glas")
    items = []
    for name in NAMES:
        mask = np.asarray(Image.open(root / "masks" / f"{name}.png"))
        write_region_points(out / f"{name}.geojson", *simulate_region_points(mask, 3, 0, name), in_class="Gland")
        items.append({"image": str(root / "images" / f"{name}.png"), "region_points": f"{name}.geojson",
                      "labels": str(root / "masks" / f"{name}.png"), "split": "validation" if name == NAMES[-1] else "train"})
    (out / "spec.yaml").write_text(yaml.safe_dump({"defaults": {"mpp": 0.62, "in_classes": ["Gland"]}, "items": items}))
    return out / "spec.yaml"


def _cfg(spec=None, epochs: int = 2, **regions):
    return load_config(overrides={
        "recipe": "regions", "model": {"width": 8}, "data": {"spec": str(spec) if spec else None, "mpp": 2.5,
                                                            "patch": 128, "crop": 128},
        "optim": {"epochs": epochs, "batch_size": 2, "lr": 1e-3},
        "regions": {"warmup_epochs": 1, "point_radius_um": 2.5, "target_class": "Gland", **regions},  # 3 x 3 squares at 2.5 µm/px
    })


@pytest.fixture(scope="module")
def glas_items(glas_spec):
    spec, cfg = load_spec(glas_spec), _cfg(glas_spec)
    train_items, _ = build_region_items(spec.split("train"), cfg)
    return train_items, build_region_eval_items(spec.split("validation"), cfg)


def _recipe(cfg, items):
    torch.manual_seed(cfg["seed"])
    return RegionsRecipe(cfg, items, NORM, torch.device("cpu"))


def test_items_hold_the_points_as_3x3_squares_on_the_working_grid(glas_items):
    (item, _), (val,) = glas_items
    assert item.image.shape == (129, 192, 3) and len(item.in_rc) == 3 and len(item.out_rc) == 3
    assert all((item.points[r - 1 : r + 2, c - 1 : c + 2] == 1).all() for r, c in item.in_rc)  # 3 x 3 in squares
    assert (item.points == 1).sum() <= 27 and (item.points == 0).sum() <= 27 and item.annotated.all()
    assert all(item.points[r, c] == 0 for r, c in item.out_rc)
    assert val.mask is not None and val.mask.dtype == bool and val.mask.shape == val.image.shape[:2]
    assert 0.2 < val.mask.mean() < 0.8 and val.points is not None


def test_u_is_computed_after_the_warm_up_and_recomputed_only_on_a_new_lowest_validation_pce(glas_items, monkeypatch,
                                                                                            tmp_path):
    recipe = _recipe(_cfg(epochs=5, warmup_epochs=2), glas_items[0])
    recipe.begin_epoch(0)
    assert recipe.pseudo == {}
    recipe.refresh_u()
    u, item = recipe.pseudo[0].numpy(), recipe.items[0]
    assert u.shape == item.image.shape[:2] and u.dtype == np.float32 and u.min() >= 0 and u.max() <= 1
    assert set(recipe.pseudo) == {0, 1} and "u" in recipe.maps(1)  # (an untrained net's u means nothing: test_cvm)
    calls = []
    monkeypatch.setattr(recipe, "refresh_u", lambda: calls.append(epoch))
    for epoch, pce in zip(range(2, 6), (0.5, 0.6, 0.4, 0.45)):
        recipe.note_validation({"pce": pce, "dice": 0.7})
        recipe.begin_epoch(epoch)
    assert calls == [2, 4]  # after 0.5 (new low) and 0.4 (new low); not after 0.6 or 0.45
    recipe.note_validation({"pce": 0.3})  # a new low pending when the checkpoint is written
    save_checkpoint(tmp_path / "c.pt", {"recipe": recipe.state_dict()})
    again = _recipe(_cfg(epochs=5, warmup_epochs=2), glas_items[0])
    assert again.best_pce == math.inf and not again.refresh_due
    again.load_state_dict(load_checkpoint(tmp_path / "c.pt")["recipe"])
    assert again.best_pce == 0.3 and again.refresh_due and again.validated
    assert all(torch.equal(again.pseudo[i], recipe.pseudo[i]) for i in (0, 1))
    assert _recipe(_cfg(loss="pce"), glas_items[0]).uses_cvm is False


def test_short_real_run_lowers_the_point_loss(glas_items, tmp_path):
    cfg = _cfg(epochs=8, loss="pce")  # 2 steps per epoch (2 images x 2 patches of 128 px, batch 2)
    seen = []
    run(cfg, _recipe(cfg, glas_items[0]), tmp_path, on_step=lambda s, logs: seen.append(logs[f"{NET}/pce"]))
    assert len(seen) == 16 and np.mean(seen[-4:]) < np.mean(seen[:4])


def test_resume_continues_bit_exactly_with_u_in_the_checkpoint(glas_items, tmp_path):
    cfg = _cfg(epochs=3)
    straight, resumed, history = straight_and_resumed(cfg, lambda c: _recipe(c, glas_items[0]), tmp_path, stop_epoch=1)
    assert [h["epoch"] for h in history] == [0, 1, 2] and "net/wkl" in history[-1]["terms"]
    for (name, p), q in zip(straight.nets[NET].state_dict().items(), resumed.nets[NET].state_dict().values()):
        assert torch.equal(p, q), f"{name} differs after resume"
    assert set(straight.pseudo) == {0, 1} and all(torch.equal(straight.pseudo[i], resumed.pseudo[i]) for i in (0, 1))


def test_train_writes_a_region_model_card_scored_on_the_validation_masks(glas_spec, tmp_path):
    result = train(_cfg(glas_spec, epochs=2), tmp_path / "m", progress=False, max_steps=1)
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["model_type"] == REGIONS and card["architecture"] == "resnet34-unet" and card["heads"] == ["region"]
    assert card["activation"] == "sigmoid" and card["classes"][0]["name"] == "Gland" and card["mpp"] == 2.5
    # region level and smallest hole were tuned on the validation masks (regions.tune_thresholds); the choice is
    # the grid's best by a brute-force check: validate_regions on a card with each grid point
    from wsi_weakseg.train.region_validate import REGION_GRID, validate_regions

    tuning = card["training"]["thresholds_tuning"]
    assert {k: card["thresholds"][k] for k in ("min_region_area_um2", "simplify_um")} == {
        "min_region_area_um2": 500.0, "simplify_um": 0.0}
    assert card["thresholds"]["region"] in REGION_GRID["region"]
    assert card["thresholds"]["min_hole_area_um2"] in REGION_GRID["min_hole_area_um2"]
    assert len(tuning["grid"]) == len(REGION_GRID["region"]) * len(REGION_GRID["min_hole_area_um2"]) and tuning["grid"][0]["region"] == 0.5 and tuning["grid"][0]["min_hole_area_um2"] == 0.0
    trained = load_model(tmp_path / "m")
    val_items = build_region_eval_items(load_spec(glas_spec).split("validation"), _cfg(glas_spec))
    brute = {(r["region"], r["min_hole_area_um2"]): validate_regions(
        trained.net, dataclasses.replace(trained.card, thresholds={**trained.card.thresholds, "region": r["region"],
                                                                   "min_hole_area_um2": r["min_hole_area_um2"]}),
        val_items)["mean"]["dice"] for r in tuning["grid"]}
    assert brute == pytest.approx({(r["region"], r["min_hole_area_um2"]): r["dice"] for r in tuning["grid"]})
    assert brute[(card["thresholds"]["region"], card["thresholds"]["min_hole_area_um2"])] == max(brute.values())
    assert card["metrics"]["mean"]["dice"] == pytest.approx(max(brute.values()))
    assert set(card["metrics"]["mean"]) == {"dice", "iou", "object_dice", "pce"}
    history = card["training"]["history"]
    assert result.best["metric"] == "dice" and history[1]["validation"]["net"]["pce"] > 0
    assert "net/wkl" not in history[0]["terms"] and "net/wkl" in history[1]["terms"]  # u after the 1-epoch warm-up
    # the trainer passed each epoch's validation means to the recipe: its lowest pCE is in the checkpoint
    cvm_state = load_checkpoint(tmp_path / "m" / "training" / "checkpoint.pt")["recipe"]["cvm"]
    assert cvm_state["validated"] and cvm_state["best_pce"] == min(h["validation"]["net"]["pce"] for h in history)
    model = load_model(tmp_path / "m")
    assert model.net.head.out_channels == 1
    # the seam with the engine: segment runs the trained card on a GlaS image and writes its region annotations
    from wsi_weakseg.engine.segment import SegmentOptions, segment

    first = yaml.safe_load(glas_spec.read_text())["items"][0]["image"]
    segment(first, tmp_path / "seg", model, SegmentOptions(device="cpu", mpp=0.62, progress=False, preview=False,
                                                           num_workers=1))
    regions = json.loads((tmp_path / "seg" / "train_1.run.json").read_text())["regions"]
    assert set(regions["area_mm2_by_class"]) == {"Gland"} and (tmp_path / "seg" / "train_1.geojson").is_file()
    # scripts/evaluate_regions.py scores a split the same way (here the validation split: the card's numbers)
    script = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "evaluate_regions.py"))
    assert script["main"]([str(tmp_path / "m"), str(glas_spec), "--split", "validation", "--out", str(tmp_path / "v.json")]) == 0
    assert json.loads((tmp_path / "v.json").read_text())["mean"] == card["metrics"]["mean"]
    # scripts/package_regions_model.py: float16 weights, name and licence; the card's metrics are the packaged
    # weights' own (scored again from the written folder, they agree exactly)
    # --test scores the test split too (here the validation image again, as a test item: the same numbers); the
    # all-target baseline's Dice is 2|M| / (|M| + N) on the working grid
    package = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "package_regions_model.py"))
    data = yaml.safe_load(glas_spec.read_text())
    data["items"] += [dict(it, split="test") for it in data["items"] if it["split"] == "validation"]
    with_test = glas_spec.parent / "with-test.yaml"
    with_test.write_text(yaml.safe_dump(data))
    assert package["main"]([str(tmp_path / "m"), str(with_test), "--name", "glands-test", "--out", str(tmp_path / "p"),
                            "--test"]) == 0
    packed = json.loads((tmp_path / "p" / "card.json").read_text())
    mask = val_items[0].mask
    assert packed["metrics"]["all_target_dice"] == round(2 * mask.sum() / (mask.sum() + mask.size), 4)
    assert packed["metrics"]["test"]["mean"] == packed["metrics"]["mean"] and packed["metrics"]["test"]["n"] == 1
    assert packed["metrics"]["test"]["all_target_dice"] == packed["metrics"]["all_target_dice"]
    assert packed["name"] == "glands-test" and "Research use only" in packed["license"] and packed["model_type"] == REGIONS
    assert all(v.dtype == torch.float16 for v in torch.load(tmp_path / "p" / "weights.pt", weights_only=True).values()
               if v.is_floating_point())
    assert script["main"]([str(tmp_path / "p"), str(glas_spec), "--split", "validation", "--out", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["mean"] == packed["metrics"]["mean"]
    assert package["main"]([str(tmp_path / "seg"), str(glas_spec), "--name", "x", "--out", str(tmp_path / "q")]) == 2
    # --retune chooses the region level and hole size again on validation; the card's validation Dice is the best
    # grid point's (same weights, same path)
    assert package["main"]([str(tmp_path / "m"), str(glas_spec), "--name", "g", "--out", str(tmp_path / "r"), "--retune"]) == 0
    retuned = json.loads((tmp_path / "r" / "card.json").read_text())
    tuning = retuned["training"]["thresholds_tuning"]
    assert {k: retuned["thresholds"][k] for k in tuning["chosen"]} == tuning["chosen"] and "segment" in tuning["path"]
    assert retuned["metrics"]["mean"]["dice"] == pytest.approx(max(row["dice"] for row in tuning["grid"]))
    assert not (tmp_path / "q").exists()
    # `labels --model` shows each training item's points and the run's last u (> 0.5 green, < 0.5 red)
    from wsi_weakseg.cli import main
    from wsi_weakseg.cli_labels import _overlay

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(_cfg(glas_spec)))
    assert main(["labels", str(glas_spec), "-o", str(tmp_path / "lab"), "--split", "train", "--config", str(cfg_file),
                 "--model", str(tmp_path / "m")]) == 0
    state = torch.load(tmp_path / "m" / "training" / "checkpoint.pt", weights_only=True)["recipe"]["pseudo"]
    u, panel = state[0].numpy(), np.asarray(Image.open(tmp_path / "lab" / "train_1.png"))
    assert panel.shape == (129, 3 * 192 + 8, 3)
    image = panel[:, :192]
    expected = _overlay(image, np.where(u > 0.5, 1, np.where(u < 0.5, 0, 2)))
    assert np.array_equal(panel[:, 2 * 196 :], expected)


def test_without_validation_masks_the_lowest_validation_pce_picks_the_epoch(glas_spec, tmp_path, caplog):
    data = yaml.safe_load(glas_spec.read_text())
    for item in data["items"]:
        item.pop("labels")  # points only, as a pathologist's validation images would be
        item["region_points"] = str(glas_spec.parent / item["region_points"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    result = train(_cfg(tmp_path / "spec.yaml", epochs=2), tmp_path / "m", progress=False, max_steps=1)
    pce = [h["validation"]["net"]["pce"] for h in result.history]
    assert "lowest validation pCE" in caplog.text and "dice" not in result.history[0]["validation"]["net"]
    assert result.best["metric"] == "pce" and result.best["value"] == min(pce) and result.best["epoch"] == pce.index(min(pce))


def test_config_checks_of_the_regions_recipe():
    paper = load_config(overrides={"recipe": "regions"})
    assert paper["optim"]["optimizer"] == "adam" and paper["optim"]["lr"] == 1e-4 and paper["regions"]["eta"] == 0.6
    assert math.isclose(paper["optim"]["weight_decay"], 1e-4) and paper["data"]["metric"] == "dice"
    for bad, match in (({"regions": {"loss": "ce"}}, "regions.loss"), ({"regions": {"eta": 1.5}}, "regions.eta"),
                       ({"regions": {"feature_stage": 5}}, "feature_stage"), ({"data": {"metric": "aji"}}, "data.metric"),
                       ({"regions": {"chan_vese": {"iterations": 0}}}, "iterations"),
                       ({"regions": {"thresholds": {"region": 1.0}}}, "thresholds.region"),
                       ({"regions": {"thresholds": {"min_region_area_um2": -1}}}, "min_region_area_um2"),
                       ({"regions": {"tune_thresholds": "yes"}}, "tune_thresholds")):
        with pytest.raises(ConfigError, match=match):
            load_config(overrides={"recipe": "regions", **bad})



def test_committed_gland_arms_differ_from_the_pce_arm_only_in_the_schedule():
    """configs/regions-eval: the shipped arm (glands-points-v1) = pCE, 5 pairs, 2e-4 cosine over 60 epochs."""
    folder = Path(__file__).resolve().parents[2] / "configs" / "regions-eval"
    arm = load_config(overrides={"recipe": "regions", "data": {"spec": "x"},
                                 "regions": {"loss": "pce", "target_class": "Gland", "target_color": [0, 170, 60]}})
    for name, (lr, epochs) in {"pce-5pairs-lr5e-4-cosine": (5e-4, 30), "pce-5pairs-lr2e-4-cosine-60": (2e-4, 60)}.items():
        cfg = load_config(folder / f"{name}.yaml")
        assert cfg["data"].pop("spec").endswith("runs/glas-points/5pairs/spec.yaml")
        assert (cfg["optim"].pop("lr"), cfg["optim"].pop("lr_schedule"), cfg["optim"].pop("epochs")) == (lr, "cosine", epochs)
        expected = {**arm, "data": {k: v for k, v in arm["data"].items() if k != "spec"},
                    "optim": {k: v for k, v in arm["optim"].items() if k not in ("lr", "lr_schedule", "epochs")}}
        assert cfg == expected


def test_train_save_items_refuses_the_regions_recipe(tmp_path, capsys):
    from wsi_weakseg.cli import main

    (tmp_path / "cfg.yaml").write_text("recipe: regions\n")
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "m"),
                 "--save-items", str(tmp_path / "items.npz")]) == 2
    assert "--save-items does not support the regions recipe" in capsys.readouterr().err


def test_committed_low_magnification_gland_arms_change_only_the_pixel_size_epochs_and_stain():
    """configs/regions-eval: the 2.5 µm/px arms = the 60-epoch arm at half the magnification (crop, patch and point
    square scaled with it), 120 epochs, and for one of them HED stain augmentation, for another the CVM loss."""
    folder = Path(__file__).resolve().parents[2] / "configs" / "regions-eval"
    base = load_config(folder / "pce-5pairs-lr2e-4-cosine-60.yaml")
    for name, stain in (("pce-5pairs-mpp2.5-cosine-120", 0.0), ("pce-5pairs-mpp2.5-stain-cosine-120", 0.4),
                        ("cvm-5pairs-mpp2.5-cosine-120", 0.0)):
        cfg = load_config(folder / f"{name}.yaml")
        assert cfg["regions"].pop("loss") == name[:3] and base["regions"]["loss"] == "pce"
        assert (cfg["data"].pop("mpp"), cfg["data"].pop("patch"), cfg["data"].pop("crop")) == (2.5, 128, 128)
        assert (cfg["optim"].pop("epochs"), cfg["regions"].pop("point_radius_um"), cfg["augment"].pop("stain")) == (120, 2.5, stain)
        expected = {**base, "data": {k: v for k, v in base["data"].items() if k not in ("mpp", "patch", "crop")},
                    "optim": {k: v for k, v in base["optim"].items() if k != "epochs"},
                    "regions": {k: v for k, v in base["regions"].items() if k not in ("point_radius_um", "loss")},
                    "augment": {k: v for k, v in base["augment"].items() if k != "stain"}}
        assert cfg == expected
