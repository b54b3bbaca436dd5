"""`wsi-weakseg train` on real MoNuSeg crops: a model folder `segment` loads, exact resume, a lean import path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from wsi_weakseg.cli import main
from wsi_weakseg.model.card import load_model

IDS = ("TCGA-18-5592-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1")


@pytest.fixture(scope="module")
def project(shared_data: Path, tmp_path_factory) -> Path:
    """A data spec over three MoNuSeg images (two train, one validation with its label map) and a tiny config."""
    root = tmp_path_factory.mktemp("project")
    m = shared_data / "monuseg-train"
    items = []
    for i, name in enumerate(IDS):
        item = {"image": str(m / "images" / f"{name}.png"), "points": str(m / "points" / f"{name}.geojson")}
        if i == 2:
            item.update(split="validation", labels=str(m / "labels" / f"{name}.png"))
        items.append(item)
    (root / "spec.yaml").write_text(json.dumps({"defaults": {"mpp": 0.25}, "items": items}))
    (root / "cfg.yaml").write_text(textwrap.dedent("""\
        data: {spec: spec.yaml, patch: 128, crop: 96}
        model: {width: 8}
        optim: {epochs: 2, batch_size: 2, lr: 0.003}
        points: {gamma_epochs: 1}
    """))
    return root


def _train(project: Path, out: Path, *extra: str) -> dict:
    code = main(["train", "--config", str(project / "cfg.yaml"), "--out", str(out), "--max-steps", "2", *extra])
    assert code == 0
    return json.loads((out / "card.json").read_text())


def test_train_writes_a_model_that_segment_loads(project: Path, tmp_path: Path, capsys):
    card = _train(project, tmp_path / "model")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["shipped"]["net"] in ("a", "b") and summary["shipped"]["metric"] == "aji"
    # The card holds the training data summary, the shipped (net, epoch) and validation metrics.
    t = card["training"]
    assert [d["name"] for d in t["data"]] == list(IDS[:2])
    assert all(d["mpp"] == pytest.approx(0.5) and d["source_mpp"] == 0.25 and d["points"] > 300 for d in t["data"])
    assert t["n_validation"] == 1 and len(t["history"]) == 2
    assert set(card["metrics"]["mean"]) >= {"aji", "object_dice", "pq", "f1"}
    assert card["metrics"]["images"][0]["n_gt"] > 300  # the validation label map was read
    assert card["context_px"] % 32 == 0 and card["arch_kwargs"] == {"width": 8}
    # Thresholds tuned on validation: the chosen setting is the grid's best, and the card's metrics use it.
    tuning = t["thresholds_tuning"]
    best_row = max(tuning["grid"], key=lambda r: r["aji"])
    assert {k: card["thresholds"][k] for k in ("foreground", "centre")} == tuning["chosen"]
    chosen = next(r for r in tuning["grid"] if r["foreground"] == tuning["chosen"]["foreground"]
                  and r["centre"] == tuning["chosen"]["centre"])
    assert chosen["aji"] == best_row["aji"] == pytest.approx(card["metrics"]["mean"]["aji"])
    assert any(r["foreground"] == 0.5 and r["centre"] == 0.3 for r in tuning["grid"])  # the defaults were tried
    # The shipped weights are the best validation epoch's net, and the folder loads.
    best = torch.load(tmp_path / "model" / "training" / "best.pt", weights_only=True)
    model = load_model(tmp_path / "model")
    for name, p in model.net.state_dict().items():
        assert torch.equal(p, best["state"][name])
    # segment runs it on a real image.
    image = project.parent / "tile.png"
    from PIL import Image

    Image.open(Path(json.loads((project / "spec.yaml").read_text())["items"][2]["image"])).crop((0, 0, 256, 256)).save(image)
    assert main(["segment", str(image), "--mpp", "0.25", "--model", str(tmp_path / "model"), "-o",
                 str(tmp_path / "seg"), "--no-progress"]) == 0
    assert (tmp_path / "seg" / "tile.geojson").is_file()


def test_resume_continues_exactly(project: Path, tmp_path: Path, monkeypatch):
    straight = tmp_path / "straight"
    _train(project, straight)
    resumed = tmp_path / "resumed"
    import wsi_weakseg.train.trainer as trainer

    calls = []
    real = trainer.validate

    def interrupt_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # nets a, b of epoch 1, then a of epoch 2: Ctrl-C before its checkpoint
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "validate", interrupt_in_epoch_2)
    assert main(["train", "--config", str(project / "cfg.yaml"), "--out", str(resumed), "--max-steps", "2"]) == 130
    assert not (resumed / "card.json").exists()
    assert torch.load(resumed / "training" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    monkeypatch.setattr(trainer, "validate", real)
    card = _train(project, resumed, "--resume")
    assert [h["epoch"] for h in card["training"]["history"]] == [0, 1]
    a = torch.load(straight / "training" / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "training" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for net in a["recipe"]["nets"]:
        for name, p in a["recipe"]["nets"][net].items():
            assert torch.equal(p, b["recipe"]["nets"][net][name]), f"{net}.{name}"
    assert (straight / "weights.pt").read_bytes() == (resumed / "weights.pt").read_bytes()


def test_existing_model_is_not_overwritten(project: Path, tmp_path: Path, capsys):
    _train(project, tmp_path / "m")
    before = (tmp_path / "m" / "weights.pt").read_bytes()
    assert main(["train", "--config", str(project / "cfg.yaml"), "--out", str(tmp_path / "m")]) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert (tmp_path / "m" / "weights.pt").read_bytes() == before


def test_bad_configs_exit_2(tmp_path: Path, capsys):
    (tmp_path / "c.yaml").write_text("optim: {epoch: 3}\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "m")]) == 2
    assert "unknown config key 'optim.epoch'" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("model: {width: 8}\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "m")]) == 2
    assert "data.spec" in capsys.readouterr().err
    assert not (tmp_path / "m" / "card.json").exists()


def test_prebuilt_items_train_without_dask_zarr_shapely_openslide(tmp_path: Path):
    """The lent GPU machine has torch/numpy/scipy/skimage/pillow/tifffile only: items carried as .npz train there."""
    from wsi_weakseg.demo import synthetic_he
    from wsi_weakseg.train.dataset import EvalItem, TrainItem, derive_targets, save_items

    items = []
    for seed in range(3):
        rgb, _ = synthetic_he(size=(160, 160), mpp=0.5, seed=seed)
        truth, n = ndi.label(rgb.mean(axis=2) < 150)
        centres = np.array(ndi.center_of_mass(truth > 0, truth, range(1, n + 1)))
        t = derive_targets(rgb, centres, np.ones(rgb.shape[:2], np.uint8), {
            "mpp": 0.5, "point_radius_um": 1.0, "cluster_distance_um": 5.0, "centre_sigma_um": 1.0, "seed": 0})
        items.append((rgb, centres, truth, t))
    save_items(tmp_path / "items.npz", [TrainItem(f"s{i}", r, t["voronoi"], t["cluster"], t["centre"])
                                        for i, (r, _, _, t) in enumerate(items[:2])],
               [EvalItem("v", items[2][0], items[2][1], items[2][2].astype(np.int32))])
    (tmp_path / "cfg.yaml").write_text("data: {items: items.npz, patch: 96, crop: 64}\nmodel: {width: 8}\n"
                                       "optim: {epochs: 1, batch_size: 2}\n")
    script = textwrap.dedent(f"""
        import sys
        for name in ("dask", "zarr", "shapely", "openslide", "distributed"):
            sys.modules[name] = None  # any import of them now fails
        from wsi_weakseg.cli import main
        sys.exit(main(["train", "--config", {str(tmp_path / 'cfg.yaml')!r}, "--out", {str(tmp_path / 'm')!r},
                       "--max-steps", "1", "--device", "cpu"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["n_train"] == 2 and card["metrics"]["images"][0]["n_gt"] == items[2][2].max()
