"""The few-masks recipe (issue 16): items from a spec, the unsupervised branch's start, the EMA teacher, a real
short run, exact resume, a model folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _resume import straight_and_resumed
from PIL import Image
from scipy import ndimage as ndi

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.errors import ConfigError
from wsi_weakseg.model.card import load_model
from wsi_weakseg.train.augment import AugmentParams
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.dataset import EvalItem, load_items, save_items
from wsi_weakseg.train.few_masks_recipe import (
    PROJECTOR,
    PROJECTOR_TEACHER,
    STUDENT,
    TEACHER,
    FewMasksRecipe,
)
from wsi_weakseg.train.loop import _batch, run
from wsi_weakseg.train.mask_items import MaskItem, build_mask_items
from wsi_weakseg.train.trainer import train
from wsi_weakseg.weak.centres import centre_heatmap, label_centroids
from wsi_weakseg.weak.masks import mask_target
from wsi_weakseg.weak.spec import load_spec

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _items(n: int = 2) -> list[MaskItem]:
    """Synthetic H&E; the dark components are the nuclei, drawn in the left half (the labelled region)."""
    items = []
    for seed in range(n):
        rgb, _ = synthetic_he(size=(96, 96), mpp=0.5, seed=seed)
        labels, _ = ndi.label(rgb.mean(axis=2) < 150)
        known = np.zeros(labels.shape, np.uint8)
        known[:, :48] = 1
        centre = centre_heatmap(label_centroids(labels), labels.shape, sigma=4.0)
        items += [MaskItem(f"item{seed}", rgb, mask_target(labels, known), centre, known), MaskItem(f"item{seed}", rgb)]
    return items


def _cfg(epochs: int, **few_masks):
    return load_config(overrides={
        "recipe": "few-masks", "model": {"width": 8}, "data": {"patch": 64, "crop": 64},
        "optim": {"epochs": epochs, "batch_size": 2, "lr": 3e-3},
        "few_masks": {"unsup_from_epoch": 1, "consistency_ramp_epochs": 1, "projector_dim": 8, **few_masks},
    })


def _recipe(cfg) -> FewMasksRecipe:
    torch.manual_seed(cfg["seed"])
    return FewMasksRecipe(cfg, _items(), NORM, torch.device("cpu"))


def _batches(recipe, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    aug = AugmentParams.from_config(recipe.cfg["augment"])
    return {k: _batch(rng, recipe, idx, 64, aug) for k, idx in recipe.halves.items()}


def test_the_unsupervised_branch_starts_at_its_epoch_and_suponly_never_runs_it():
    recipe = _recipe(_cfg(epochs=3))
    assert recipe.halves == {"labelled": [0, 2], "unlabelled": [1, 3]}
    recipe.train(True)
    assert set(recipe.step(_batches(recipe), epoch=0)) == {"student/sup", "student/centre", "loss"}
    terms = recipe.step(_batches(recipe), epoch=1)
    assert {"student/contrast", "student/consistency", "student/entropy"} <= set(terms)
    assert 0 < terms["student/consistency"] < 0.05  # w_cons = exp(-5) = 0.0067 at the branch's first epoch
    suponly = _recipe(_cfg(epochs=3, unsup_from_epoch=None))
    assert set(suponly.step(_batches(suponly), epoch=2)) == {"student/sup", "student/centre", "loss"}


def test_the_teacher_is_the_ema_of_the_student_after_every_step():
    recipe = _recipe(_cfg(epochs=2, ema_alpha=0.9))
    recipe.train(True)
    recipe.step(_batches(recipe, 0), epoch=0)  # step 0: alpha 0, the teacher copies the student (and projector)
    for a, b in ((STUDENT, TEACHER), (PROJECTOR, PROJECTOR_TEACHER)):
        s, t = recipe.nets[a].state_dict(), recipe.nets[b].state_dict()
        assert all(torch.equal(s[k], t[k]) for k in s)
    t = recipe.nets[TEACHER].state_dict()
    before = {k: v.clone() for k, v in t.items()}
    recipe.step(_batches(recipe, 1), epoch=0)  # step 1: alpha min(1 - 1/2, 0.9) = 0.5
    s = recipe.nets[STUDENT].state_dict()
    for k, v in recipe.nets[TEACHER].state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, 0.5 * before[k] + 0.5 * s[k], atol=1e-7), k
    assert not recipe.nets[TEACHER].training and not any(p.requires_grad for p in recipe.nets[TEACHER].parameters())
    assert recipe.ema_steps == 2


def test_short_run_decreases_the_supervised_loss(tmp_path):
    cfg = _cfg(epochs=5, unsup_from_epoch=2)
    seen = []
    run(cfg, _recipe(cfg), tmp_path, max_steps=4, on_step=lambda s, logs: seen.append(logs["student/sup"]))
    assert len(seen) == 20
    assert np.mean(seen[-4:]) < 0.9 * np.mean(seen[:4])


def test_resume_continues_bit_exactly_with_the_teacher_in_the_checkpoint(tmp_path):
    cfg = _cfg(epochs=4)
    straight, resumed, history = straight_and_resumed(cfg, _recipe, tmp_path, stop_epoch=2)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3] and "student/contrast" in history[-1]["terms"]
    assert resumed.ema_steps == straight.ema_steps == 8
    for name in (STUDENT, TEACHER, PROJECTOR, PROJECTOR_TEACHER):
        for (key, p), q in zip(straight.nets[name].state_dict().items(), resumed.nets[name].state_dict().values()):
            assert torch.equal(p, q), f"{name}.{key} differs after resume"


def test_train_writes_a_model_that_loads_with_recipe_and_instance_rule_in_its_card(tmp_path):
    items = _items()
    rgb, _ = synthetic_he(size=(96, 96), mpp=0.5, seed=7)
    val = [EvalItem("val", rgb, np.array([[48.0, 48.0]]), ndi.label(rgb.mean(axis=2) < 150)[0])]
    train_items, val_items = load_items(save_items(tmp_path / "items.npz", items, val))
    assert [it.labelled for it in train_items] == [True, False, True, False]
    assert np.array_equal(train_items[2].mask, items[2].mask) and np.array_equal(train_items[2].centre, items[2].centre)
    result = train(_cfg(epochs=2), tmp_path / "m", progress=False, max_steps=1,
                   data=(train_items, val_items, [{"name": "item0"}, {"name": "item1"}]))
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["recipe"] == "few-masks" and "centroids of the drawn nuclei" in card["training"]["instances"]
    assert "few drawn nucleus masks" in card["description"] and result.best["net"] in (STUDENT, TEACHER)
    assert set(card["training"]["history"][-1]["validation"]) == {STUDENT, TEACHER}
    load_model(tmp_path / "m")


def _geojson(features) -> str:
    return json.dumps({"type": "FeatureCollection", "features": features})


def _feature(kind, coords, cls=None):
    props = {"objectType": "annotation"}
    if cls:
        props["classification"] = {"name": cls}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def _box(x0, y0, x1, y1):
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def test_spec_items_become_labelled_windows_and_unlabelled_images_on_the_working_grid(tmp_path):
    """A 160 x 160 image at 0.25 µm/px read at 0.5 (80 x 80 working px); region level-0 [0, 40)^2 = working [0, 20)^2."""
    rgb, _ = synthetic_he(size=(160, 160), mpp=0.25, seed=1)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    (tmp_path / "m.geojson").write_text(_geojson([_feature("Polygon", _box(0, 0, 40, 40)),
                                                  _feature("Polygon", _box(4, 4, 12, 12), "Nucleus")]))
    labels = np.zeros((160, 160), np.uint16)
    labels[8:16, 8:16], labels[100:110, 100:110] = 7, 9  # the second lies outside the region
    Image.fromarray(labels).save(tmp_path / "lab.png")
    (tmp_path / "r.geojson").write_text(_geojson([_feature("Polygon", _box(0, 0, 40, 40))]))
    (tmp_path / "p.geojson").write_text(_geojson([_feature("Polygon", _box(0, 0, 80, 80)),
                                                  _feature("Point", [41.0, 41.0], "Nucleus")]))
    (tmp_path / "spec.yaml").write_text(
        "defaults: {mpp: 0.25}\nitems:\n- {image: im.png, masks: m.geojson}\n"
        "- {image: im.png, masks: lab.png, region: r.geojson}\n- {image: im.png, points: p.geojson}\n- {image: im.png}\n")
    cfg = load_config(overrides={"recipe": "few-masks", "data": {"crop": 32, "patch": 32}})
    items, summary = build_mask_items(load_spec(tmp_path / "spec.yaml").items, cfg)
    assert [it.labelled for it in items] == [True, False, True, False, True, False, False]
    assert [row["role"] for row in summary] == ["masks", "masks", "points", "unlabelled"]
    assert all(it.image.shape == (80, 80, 3) for it in items[1::2]) and items[-1].image.shape == (80, 80, 3)
    # polygon item: region [0, 20)^2 grown by the 10 µm (20 px) margin -> window [0, 40)^2
    poly = items[0]
    assert poly.mask.shape == (40, 40) and summary[0]["window"] == [0, 0, 40, 40]
    expected = np.full((40, 40), 2, np.uint8)
    expected[:20, :20] = 0
    expected[2:6, 2:6] = 1  # level-0 [4, 12) -> working [2, 6)
    np.testing.assert_array_equal(poly.mask, expected)
    np.testing.assert_array_equal(poly.centre_known, (expected != 2).astype(np.uint8))
    # centroid (3.5, 3.5) rounds to pixel (4, 4); sigma 2 µm = 4 px
    assert poly.centre[4, 4] == 1.0 and poly.centre[4, 5] == pytest.approx(np.exp(-1 / 32))
    # label image + region: nucleus 7 (level-0 [8, 16) -> working [4, 8)) kept, nucleus 9 outside dropped
    lab = items[2]
    expected = np.full((40, 40), 2, np.uint8)
    expected[:20, :20] = 0
    expected[4:8, 4:8] = 1
    np.testing.assert_array_equal(lab.mask, expected)
    assert np.unravel_index(lab.centre.argmax(), lab.centre.shape) == (6, 6) and summary[1]["nuclei"] == 1
    assert lab.centre[39, 39] < 1e-6  # no bump from the dropped nucleus (working centre ~ (52, 52))
    # click-only item: foreground unlabelled; click at level-0 (41, 41) -> working pixel (20, 20); region [0, 40)^2
    pts = items[4]
    assert (pts.mask == 2).all() and pts.mask.shape == (60, 60) and pts.centre[20, 20] == 1.0
    assert pts.centre_known[:40, :40].all() and not pts.centre_known[40:].any()
    with pytest.raises(ConfigError, match="needs at least one training item with 'masks'"):
        build_mask_items(load_spec(tmp_path / "spec.yaml").items[2:], cfg)


@pytest.mark.parametrize(("few_masks", "data", "match"), [
    ({"patch_um": 7.0}, {}, "multiple of 4 px"),  # 14 px at 0.5 µm/px
    ({"patch_um": 12.0}, {}, "divides data.crop"),  # 24 px does not divide 224
    ({"unsup_from_epoch": -1}, {}, "integer >= 0, or null"),
    ({"inference_net": "a"}, {}, "student', 'teacher' or 'best"),
    ({"fg_score": 0.2}, {}, "bg_score < fg_score"),
    ({"max_negatives": 0}, {}, "positive integer"),
    ({}, {"crop": 200}, "multiple of 32"),
])
def test_config_checks(few_masks, data, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides={"recipe": "few-masks", "few_masks": few_masks, "data": data})
    cfg = load_config(overrides={"recipe": "few-masks", "few_masks": {"unsup_from_epoch": None}})
    assert cfg["optim"]["lr_schedule"] == "poly" and cfg["few_masks"]["unsup_from_epoch"] is None
