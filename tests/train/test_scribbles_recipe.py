"""The scribbles recipe (issue 15): EMA schedule, derived targets, a real short run, exact resume, a model folder."""

from __future__ import annotations

import json

import numpy as np
import torch
from _resume import straight_and_resumed

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.model.card import load_model
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.dataset import EvalItem, load_items, save_items
from wsi_weakseg.train.loop import run
from wsi_weakseg.train.scribble_items import ScribbleItem
from wsi_weakseg.train.scribbles_recipe import NET, ScribblesRecipe
from wsi_weakseg.train.trainer import train

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _items(n: int = 2) -> list[ScribbleItem]:
    """Synthetic H&E with strokes: nucleus on a few dark pixels, background on a few bright ones (seeded)."""
    items = []
    for seed in range(n):
        rgb, _ = synthetic_he(size=(96, 96), mpp=0.5, seed=seed)
        grey = rgb.mean(axis=2)
        rng = np.random.default_rng(seed)
        keep = rng.random(grey.shape) < 0.15
        scribble = np.full(grey.shape, 2, np.uint8)
        scribble[(grey < 150) & keep] = 1
        scribble[(grey > 215) & keep] = 0
        items.append(ScribbleItem(f"item{seed}", rgb, scribble))
    return items


def _cfg(epochs: int, **scribbles):
    return load_config(overrides={
        "recipe": "scribbles", "model": {"width": 8}, "data": {"patch": 64, "crop": 64},
        "optim": {"epochs": epochs, "batch_size": 2, "lr": 3e-3},
        "scribbles": {"warmup_epochs": 1, "gamma_epochs": 1, "tau": 0.6, **scribbles},
    })


def _recipe(cfg) -> ScribblesRecipe:
    torch.manual_seed(cfg["seed"])
    return ScribblesRecipe(cfg, _items(), NORM, torch.device("cpu"))


def test_the_ema_is_updated_after_the_warm_up_every_gamma_epochs(monkeypatch):
    cfg = _cfg(epochs=10, warmup_epochs=3, gamma_epochs=2)
    recipe = _recipe(cfg)
    calls = []
    monkeypatch.setattr(recipe, "refresh_pseudo_labels", lambda: calls.append(epoch))
    for epoch in range(10):
        recipe.begin_epoch(epoch)
    assert calls == [3, 5, 7, 9]


def test_refresh_is_the_papers_ema_and_targets_follow_it():
    cfg = _cfg(epochs=2, ema_alpha=0.25)
    recipe = _recipe(cfg)
    recipe.refresh_pseudo_labels()
    first = {i: t.clone() for i, t in recipe.pseudo.items()}
    with torch.no_grad():  # change the net so the second prediction differs
        for p in recipe.nets[NET].parameters():
            p.add_(0.01)
    recipe.refresh_pseudo_labels()
    # y_2 = a f + (1 - a) y_1  =>  f = (y_2 - 0.75 y_1) / 0.25 must be a probability map
    f = (recipe.pseudo[0] - 0.75 * first[0]) / 0.25
    assert float(f.min()) >= -1e-5 and float(f.max()) <= 1 + 1e-5
    assert not torch.allclose(recipe.pseudo[0], first[0])
    maps = recipe.maps(0)
    ema, tau = recipe.pseudo[0].numpy(), 0.6
    scribbled = recipe.items[0].scribble != 2
    assert np.array_equal(maps["pseudo"][~scribbled & (ema > tau)], np.ones(((~scribbled) & (ema > tau)).sum()))
    assert (maps["pseudo"][scribbled] == 2).all()
    assert np.array_equal(maps["decided"] == 1, (ema > tau) | (1 - ema > tau) | scribbled)
    strokes = recipe.items[0].scribble
    assert (maps["centre"][((ema <= 0.5) & (strokes != 1)) | (strokes == 0)] == 0).all()
    assert (maps["centre"][strokes == 1] > 0).all()


def test_short_run_decreases_the_scribbled_loss(tmp_path):
    cfg = _cfg(epochs=5, warmup_epochs=5)
    seen = []
    run(cfg, _recipe(cfg), tmp_path, max_steps=4, on_step=lambda s, logs: seen.append(logs[f"{NET}/scribbled"]))
    assert len(seen) == 20
    assert np.mean(seen[-4:]) < np.mean(seen[:4])


def test_resume_continues_bit_exactly_with_the_ema_in_the_checkpoint(tmp_path):
    cfg = _cfg(epochs=4)
    straight, resumed, history = straight_and_resumed(cfg, _recipe, tmp_path, stop_epoch=2)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert "net/unscribbled" in history[-1]["terms"] and "net/centre" in history[-1]["terms"]
    for (name, p), q in zip(straight.nets[NET].state_dict().items(), resumed.nets[NET].state_dict().values()):
        assert torch.equal(p, q), f"{name} differs after resume"
    assert set(straight.pseudo) == {0, 1} and all(torch.equal(straight.pseudo[i], resumed.pseudo[i]) for i in (0, 1))


def test_train_writes_a_model_that_loads_with_its_instance_rule_recorded(tmp_path):
    items = _items()
    rgb, _ = synthetic_he(size=(96, 96), mpp=0.5, seed=7)
    val = [EvalItem("val", rgb, np.array([[48.0, 48.0]]))]
    saved = save_items(tmp_path / "items.npz", items, val)
    train_items, val_items = load_items(saved)
    assert isinstance(train_items[0], ScribbleItem) and np.array_equal(train_items[1].scribble, items[1].scribble)
    cfg = _cfg(epochs=2)
    result = train(cfg, tmp_path / "m", progress=False, max_steps=1, data=(train_items, val_items, [{"name": "x"}]))
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["recipe"] == "scribbles" and "distance transform" in card["training"]["instances"]
    assert "scribbles" in card["description"] and result.best["net"] == NET
    load_model(tmp_path / "m")


def test_strokes_of_a_spec_item_are_rasterised_on_the_working_grid(tmp_path):
    """A 0.25 µm/px image read at 0.5: a horizontal nucleus line through level-0 y = 9 (working row 4.5 -> row 4)."""
    from PIL import Image

    from wsi_weakseg.train.scribble_items import build_scribble_items
    from wsi_weakseg.weak.spec import load_spec

    rgb, _ = synthetic_he(size=(40, 40), mpp=0.25, seed=1)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    line = lambda cls, y: {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[4.0, y], [20.0, y]]},  # noqa: E731
                           "properties": {"objectType": "annotation", "classification": {"name": cls}}}
    fc = {"type": "FeatureCollection", "features": [line("Nucleus", 9.0), line("Background", 30.0)]}
    (tmp_path / "s.geojson").write_text(json.dumps(fc))
    (tmp_path / "spec.yaml").write_text("items:\n- image: im.png\n  scribbles: s.geojson\n  mpp: 0.25\n")
    cfg = _cfg(epochs=1, width_um=0.5)  # 1 working px wide: the line covers the pixel centres within 0.5 px
    items, summary = build_scribble_items(load_spec(tmp_path / "spec.yaml").items, cfg)
    lab = items[0].scribble
    assert lab.shape == (20, 20) and items[0].image.shape == (20, 20, 3)
    expected = np.full((20, 20), 2, np.uint8)
    expected[4, 2:10] = 1  # x in [2, 10] working px; centres 2.5 .. 9.5 (round caps reach 1.5 and 10.5)
    assert np.array_equal(lab, expected)
    # Level-0 y 30 -> working y 15.0, the edge between rows 14 and 15: every centre lies exactly 0.5 px away, on
    # the buffer's boundary, so the background stroke marks nothing and is counted as empty.
    assert summary[0]["strokes"] == {"nucleus": 1, "background": 1} and summary[0]["empty_strokes"] == 1
