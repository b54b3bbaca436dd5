"""Scribble simulator: round trip through the real import path, fractions, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import run_script
from skimage.draw import disk, ellipse

from wsi_weakseg.errors import ConfigError
from wsi_weakseg.weak.scribbles import read_scribbles, scribble_label
from wsi_weakseg.weak.simulate_scribbles import (
    FRACTIONS,
    simulate_scribbles,
    skeleton_chains,
)
from wsi_weakseg.weak.spec import load_spec
from wsi_weakseg.weak.voronoi import BACKGROUND, NUCLEUS


def _mask() -> np.ndarray:
    lab = np.zeros((80, 96), np.int32)
    rng = np.random.default_rng(0)
    for i, (r, c) in enumerate([(15, 15), (15, 45), (40, 30), (60, 70), (20, 80), (62, 20)]):
        rr, cc = ellipse(r, c, 6 + rng.integers(0, 4), 9, shape=lab.shape, rotation=float(rng.random()))
        lab[rr, cc] = i + 1
    rr, cc = disk((40, 60), 5, shape=lab.shape)  # touches nothing else
    lab[rr, cc] = 7
    return lab


def _skeleton_pixels(lab):
    chains = skeleton_chains(lab)
    out = {}
    for cls, cs in chains.items():
        m = np.zeros(lab.shape, bool)
        for ch in cs:
            assert not m[ch[:, 0], ch[:, 1]].any()  # every skeleton pixel in one chain only
            m[ch[:, 0], ch[:, 1]] = True
        out[cls] = m
    return out


def _round_trip(tmp_path, lab, fraction, seed=1):
    path = tmp_path / f"s{fraction}.geojson"
    path.write_text(json.dumps(simulate_scribbles(lab, fraction, seed)))
    s = read_scribbles(path, image_size=(lab.shape[1], lab.shape[0]))
    return scribble_label(s, (lab.shape[1], lab.shape[0]), level0_mpp=0.5, mpp=0.5, width_um=0.5)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_round_trip_covers_kept_skeleton(tmp_path, fraction):
    lab = _mask()
    skel = _skeleton_pixels(lab)
    r = _round_trip(tmp_path, lab, fraction)
    nuc, bg = r.labels == NUCLEUS, r.labels == BACKGROUND
    assert r.n_overlap == 0 and r.n_empty == 0
    assert (lab[nuc] > 0).all() and (lab[bg] == 0).all()  # nucleus strokes inside, background outside
    assert not (nuc & ~skel["Nucleus"]).any() and not (bg & ~skel["Background"]).any()  # only skeleton pixels
    total = skel["Nucleus"].sum() + skel["Background"].sum()
    share = (nuc.sum() + bg.sum()) / total
    assert share == pytest.approx(fraction, abs=0.08)
    if fraction == 1.0:
        np.testing.assert_array_equal(nuc, skel["Nucleus"])
        np.testing.assert_array_equal(bg, skel["Background"])
    assert len(np.unique(lab[nuc])) >= 2  # strokes in several nuclei


def test_seeded_determinism():
    lab = _mask()
    a = simulate_scribbles(lab, 0.3, seed=5)
    assert a == simulate_scribbles(lab, 0.3, seed=5)
    assert a != simulate_scribbles(lab, 0.3, seed=6)
    assert {f["properties"]["classification"]["name"] for f in a["features"]} == {"Nucleus", "Background"}


def test_bad_fraction():
    with pytest.raises(ConfigError):
        simulate_scribbles(_mask(), 0.0, seed=0)


def test_script_writes_scribbles_for_training_items_from_a_masks_folder(shared_data, tmp_path):
    """The script on a real point spec (masks named only for validation): training masks come from --masks."""

    mon = shared_data / "monuseg-train"
    stems = sorted(p.stem for p in (mon / "images").glob("*.png"))[:4]
    spec = tmp_path / "spec.yaml"
    splits = ["train", "train", "validation", "test"]
    spec.write_text("items:\n" + "".join(
        f"- image: {mon / 'images' / s}.png\n  points: {mon / 'points' / s}.geojson\n  mpp: 0.25\n  split: {split}\n"
        + (f"  labels: {mon / 'labels' / s}.png\n" if split != "train" else "")
        for s, split in zip(stems, splits)))
    run_script("simulate_scribbles.py", str(spec), "--out", str(tmp_path / "out"), "--masks", str(mon / "labels"),
               "--fractions", "0.3", "--specs")
    written = sorted(p.stem for p in (tmp_path / "out" / "30").glob("*.geojson"))
    assert written == stems[:2]  # training items only: validation and test masks never feed the simulator
    scrib, points = load_spec(tmp_path / "out" / "30" / "spec.yaml"), load_spec(tmp_path / "out" / "points" / "spec.yaml")
    for built in (scrib, points):
        assert [i.image.stem for i in built.split("train")] == stems[:2]
        assert [(i.image.stem, i.labels.stem) for i in built.split("validation")] == [(stems[2], stems[2])]
        assert built.split("test") == ()
    assert all(i.points is None and i.scribbles.parent.name == "30" for i in scrib.split("train"))
    assert all(i.scribbles is None and i.points.stem == i.image.stem for i in points.split("train"))
    s = read_scribbles(tmp_path / "out" / "30" / f"{stems[0]}.geojson", image_size=(1000, 1000))
    raster = scribble_label(s, (1000, 1000), level0_mpp=0.25, mpp=0.25, width_um=0.25)
    assert (raster.labels == NUCLEUS).sum() > 500 and (raster.labels == BACKGROUND).sum() > 500
