"""Threshold tuning: the grid is the full product with the card's values in it, and the combined objective is
the mean of its two parts computed separately."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.model.card import BASELINE_MODEL, load_model
from wsi_weakseg.train.dataset import EvalItem
from wsi_weakseg.train.tune import tune_thresholds


def _item(seed: int, with_labels: bool) -> EvalItem:
    rgb, _ = synthetic_he((192, 256), mpp=0.5, seed=seed)
    labels, n = ndi.label(rgb.mean(-1) < 150)  # the drawn (dark) nuclei as ground truth
    centres = np.array(ndi.center_of_mass(labels > 0, labels, range(1, n + 1)))
    return EvalItem(name=f"s{seed}", image=rgb, points_rc=centres, labels=labels.astype(np.int32) if with_labels else None)


@pytest.fixture(scope="module")
def setup():
    model = load_model(BASELINE_MODEL)
    items = [_item(0, True), _item(1, True), _item(2, False)]
    return model, items


def test_grid_is_the_product_with_the_card_values(setup):
    model, items = setup
    thresholds, table = tune_thresholds(model.net, model.card, items, "aji", 3.0, foreground=(0.4,), centre=(0.2,),
                                        min_area_um2=(3.0,), peak_radius_um=())
    base = model.card.thresholds
    assert len(table) == 2 * 2 * 2 * 1
    assert {(r["foreground"], r["centre"], r["min_area_um2"], r["peak_radius_um"]) for r in table} == {
        (f, c, a, base["peak_radius_um"]) for f in (0.4, base["foreground"]) for c in (0.2, base["centre"])
        for a in (3.0, base["min_area_um2"])}
    best = max(r["aji"] for r in table)
    assert best > 0.3
    chosen = next(r for r in table if all(r[k] == thresholds[k] for k in ("foreground", "centre", "min_area_um2")))
    assert chosen["aji"] == best


def test_combined_objective_is_the_mean_of_its_parts(setup):
    model, items = setup
    kw = dict(foreground=(0.4,), centre=(0.2,))
    _, both = tune_thresholds(model.net, model.card, items, "aji+f1", 3.0, **kw)
    _, aji = tune_thresholds(model.net, model.card, items[:2], "aji", 3.0, **kw)
    _, f1 = tune_thresholds(model.net, model.card, items[2:], "f1", 3.0, **kw)
    for b, a, f in zip(both, aji, f1):
        assert (b["foreground"], b["centre"]) == (a["foreground"], a["centre"]) == (f["foreground"], f["centre"])
        assert b["aji+f1"] == pytest.approx((a["aji"] + f["f1"]) / 2)
