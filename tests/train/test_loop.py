"""A real short training run of the points recipe: loss decreases, checkpoints reload, resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.loop import run
from wsi_weakseg.train.dataset import TrainItem
from wsi_weakseg.train.points_recipe import PointsRecipe

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _items(n: int = 2) -> list[TrainItem]:
    items = []
    for seed in range(n):
        rgb, _ = synthetic_he(size=(128, 128), mpp=0.5, seed=seed)
        dark = rgb.mean(axis=2) < 150
        cluster = np.where(dark, 1, np.where(rgb.mean(axis=2) > 200, 0, 2)).astype(np.uint8)
        lab, _ = ndi.label(dark)
        centres = np.array(ndi.center_of_mass(dark, lab, range(1, lab.max() + 1))).reshape(-1, 2)
        heat = np.zeros(dark.shape, np.float32)
        if len(centres):
            heat[tuple(np.rint(centres).astype(int).T)] = 1.0
        heat = np.clip(ndi.gaussian_filter(heat, 2.0) * 12.0, 0, 1)
        vor = np.full(dark.shape, 2, np.uint8)
        vor[heat > 0.5] = 1
        vor[rgb.mean(axis=2) > 220] = 0
        items.append(TrainItem(f"item{seed}", rgb, vor, cluster, heat))
    return items


def _cfg(epochs: int):
    return load_config(overrides={
        "model": {"width": 8}, "data": {"patch": 64, "crop": 64},
        "optim": {"epochs": epochs, "batch_size": 2, "lr": 3e-3}, "points": {"gamma_epochs": 1},
    })


def _recipe(cfg) -> PointsRecipe:
    torch.manual_seed(cfg["seed"])
    return PointsRecipe(cfg, _items(), NORM, torch.device("cpu"))


def test_short_run_decreases_the_supervised_loss(tmp_path):
    cfg = _cfg(epochs=4)
    seen = []
    run(cfg, _recipe(cfg), tmp_path, max_steps=4,
        on_step=lambda s, logs: seen.append(logs["a/cluster"] + logs["b/cluster"] + logs["a/voronoi"] + logs["b/voronoi"]))
    assert len(seen) == 16
    assert np.mean(seen[-4:]) < np.mean(seen[:4])


def test_checkpoint_reloads_to_identical_outputs_and_resume_is_exact(tmp_path):
    cfg = _cfg(epochs=3)
    straight = _recipe(cfg)
    run(cfg, straight, tmp_path / "a", max_steps=2)

    class Stop(Exception):
        pass

    def stop_at_epoch_1(recipe, epoch):
        if epoch == 1:
            raise Stop
        return {}

    interrupted = _recipe(cfg)
    with pytest.raises(Stop):
        run(cfg, interrupted, tmp_path / "b", max_steps=2, validate=stop_at_epoch_1)
    resumed = _recipe(cfg)
    history = run(cfg, resumed, tmp_path / "b", max_steps=2, resume=True)
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[-1]["steps"] == 3 * 2
    for k, net in straight.nets.items():
        for (name, p), q in zip(net.state_dict().items(), resumed.nets[k].state_dict().values()):
            assert torch.equal(p, q), f"{k}.{name} differs after resume"
    assert set(straight.pseudo) == set(resumed.pseudo)
    assert all(torch.equal(straight.pseudo[i], resumed.pseudo[i]) for i in straight.pseudo)
    # A fresh recipe loading the checkpoint predicts exactly what the trained one predicts.
    fresh = _recipe(cfg)
    fresh.load_state_dict(torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["recipe"])
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(fresh.nets["a"].eval()(x), straight.nets["a"].eval()(x))


def test_resume_without_checkpoint_is_an_error(tmp_path):
    cfg = _cfg(epochs=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(cfg, _recipe(cfg), tmp_path, resume=True)


def test_keep_epoch_nets_saves_both_nets_of_every_epoch(tmp_path):
    cfg = _cfg(epochs=2)
    cfg["optim"]["keep_epoch_nets"] = True
    recipe = _recipe(cfg)
    run(cfg, recipe, tmp_path, max_steps=1)
    files = sorted((tmp_path / "epochs").glob("e*.pt"))
    assert [f.name for f in files] == ["e00.pt", "e01.pt"]
    last = torch.load(files[-1], weights_only=True)
    assert last["epoch"] == 1 and set(last["nets"]) == {"a", "b"}
    for k in ("a", "b"):  # the last file holds the final weights of both segmentation nets
        net = recipe.nets[k]
        for name, p in net.state_dict().items():
            assert torch.equal(p, last["nets"][k][name])
    first = torch.load(files[0], weights_only=True)
    assert not all(torch.equal(first["nets"]["a"][n], last["nets"]["a"][n]) for n in first["nets"]["a"])


def test_crf_term_is_the_weighted_pairwise_loss_of_each_nets_foreground():
    from wsi_weakseg.train.losses import pairwise_crf_loss
    from wsi_weakseg.train.points_recipe import to_tensor

    cfg = load_config(overrides={"model": {"width": 8}, "data": {"patch": 64, "crop": 64},
                                 "points": {"crf_weight": 0.5, "crf_radius_um": 1.0, "crf_sigma_um": 0.75}})
    recipe = _recipe(cfg)
    batches = {}
    for k, item in zip("ab", _items()):
        sl = np.s_[None, :64, :64]
        batches[k] = {"image": item.image[sl], "voronoi": item.voronoi[sl], "cluster": item.cluster[sl],
                      "centre": item.centre[sl], "annotated": np.ones((1, 64, 64), np.uint8)}
    expected = {}
    with torch.no_grad():
        for k in "ab":
            fg = recipe.nets[k](to_tensor(batches[k]["image"], NORM, torch.device("cpu")))[:, 0]
            rgb = torch.from_numpy(batches[k]["image"]).permute(0, 3, 1, 2).float() / 255
            # 1 µm at 0.5 µm/px: a 5 x 5 window; sigma 0.75 µm = 1.5 px
            expected[k] = 0.5 * float(pairwise_crf_loss(torch.sigmoid(fg), rgb, 2, 1.5, 0.1))
    logs = recipe.step(batches, epoch=0)
    assert logs["a/crf"] == pytest.approx(expected["a"], rel=1e-4)
    assert logs["b/crf"] == pytest.approx(expected["b"], rel=1e-4)
    off = _recipe(load_config(overrides={"model": {"width": 8}, "data": {"patch": 64, "crop": 64}}))
    assert "a/crf" not in off.step(batches, epoch=0)
