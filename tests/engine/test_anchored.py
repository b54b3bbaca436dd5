"""The detect-segment model type's local rules, on hand-made outputs (issue 17)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsi_weakseg.engine.anchored import (
    OFFSET_BIAS,
    AnchoredMaps,
    AnchoredParams,
    detect,
    label_anchored,
    rasterise,
)
from wsi_weakseg.errors import ModelCardError
from wsi_weakseg.model.card import (
    ModelCard,
    available_models,
    identity_sha256,
    load_model,
)
from wsi_weakseg.model.lacss import LacssOutput


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _output(cells: dict[tuple[int, int], tuple[float, float, float]], shape=(8, 8)) -> LacssOutput:
    """Stride-4 detections: probability and (dy, dx) offset at the given cells, nothing elsewhere."""
    det = torch.full((1, 3, *shape), -20.0)
    det[0, 1:] = 0.0
    for (r, c), (p, dy, dx) in cells.items():
        det[0, :, r, c] = torch.tensor([_logit(p), dy, dx])
    return LacssOutput([det], torch.zeros(1, 4, *shape))


def test_detections_are_kept_by_a_local_rule_not_greedy_chains():
    """A (0.9) - B (0.8) - C (0.7) in a row 12 px apart, radius 13: greedy NMS would keep A and C; the local
    rule keeps only A, because C is not the best within its radius (B is there, suppressed or not)."""
    out = _output({(1, 1): (0.9, 0, 0), (1, 4): (0.8, 0, 0), (1, 7): (0.7, 0, 0), (6, 6): (0.6, 0.25, -0.25)})
    d = detect(out, (4,), 0, threshold=0.5, radius=13.0, shape=(32, 32))
    # centres at 4 (i + 0.5) + 4 offset: (6, 6) and (26 + 1, 26 - 1)
    assert d.anchors.tolist() == [[6, 6], [27, 25]]
    np.testing.assert_allclose(d.scores, [0.9, 0.6], rtol=1e-6)
    # ties: same probability 5 px apart -> the earlier pixel in raster order wins, wherever the input starts
    out = _output({(2, 2): (0.8, 0, 0), (2, 3): (0.8, 0, 0.25)})
    assert detect(out, (4,), 0, 0.5, 6.0, (32, 32)).anchors.tolist() == [[10, 10]]
    # a location pushed off the input by its offset is dropped before the rule
    out = _output({(0, 0): (0.9, -1.0, 0.0), (0, 2): (0.6, 0, 0)})
    assert detect(out, (4,), 0, 0.5, 20.0, (32, 32)).anchors.tolist() == [[2, 10]]


def test_pixels_go_to_the_highest_logit_and_anchors_to_themselves():
    window = 8
    anchors = np.array([[4, 4], [4, 8]])  # windows rows 0..7, cols 0..7 and 4..11
    logits = np.full((2, window, window), -1.0, np.float32)
    logits[0, :, :] = 2.0
    logits[1, :, :] = 2.0  # a tie on the overlap: the earlier anchor keeps it ...
    logits[1, :, 4:] = 3.0  # ... except where anchor 1 is higher (window cols 4.. = image cols 8..)
    logits[0, 4, 4] = -5.0  # anchor 0's own pixel is still its own
    best, owner = rasterise(logits, anchors, window, (0, 0, 8, 12))
    assert owner[4, 4] == 0 and best[4, 4] == -5.0
    assert (owner[:, 4:8][np.arange(8) != 4] == 0).all()  # the tie on cols 4..7
    assert (owner[:, 8:12] == 1).all() and (best[:, 8:12] == 3.0).all()
    assert (owner[:, :4] == 0).all()


def _maps(owner_of: dict[tuple[int, int], tuple[int, int]], shape=(12, 12), fg: int = 200) -> np.ndarray:
    m = np.zeros((4, *shape), np.uint8)
    m[2:] = OFFSET_BIAS
    for (y, x), (ay, ax) in owner_of.items():
        m[0, y, x] = fg
        m[2, y, x] = ay - y + OFFSET_BIAS
        m[3, y, x] = ax - x + OFFSET_BIAS
    return m


def test_instances_follow_the_offsets_and_drop_nuclei_without_their_anchor():
    params = AnchoredParams(foreground=128, centre=1, peak_radius=1, max_cost=11.0, path_weight=0.0, min_area=2,
                            window=16)
    own = {(y, x): (2, 2) for y in range(1, 4) for x in range(1, 4)}  # a 3 x 3 nucleus anchored at (2, 2)
    own.update({(y, x): (8, 8) for y in range(7, 10) for x in range(7, 10)})  # another at (8, 8) ...
    own[(8, 8)] = (2, 2)  # ... whose anchor pixel another tile gave to the first: it is dropped
    own.update({(5, 10): (5, 20), (5, 11): (5, 20)})  # anchor outside the window: left unlabelled
    labels, markers, flags = label_anchored(_maps(own), params)
    assert markers.tolist() == [[2, 2]]
    expected = np.zeros((12, 12), np.int32)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(labels, expected)  # (8, 8) goes too: not 4-connected to the anchor (2, 2)
    assert flags.tolist() == [False, False]
    # a nucleus reaching the edge of its mask window is flagged: the window of anchor (2, 2) is rows -8 .. 7
    own = {(y, x): (2, 2) for y in range(1, 4) for x in range(1, 4)}
    own.update({(y, 2): (2, 2) for y in range(4, 8)})
    labels, markers, flags = label_anchored(_maps(own), params)
    assert (labels[1:8, 2] == 1).all() and flags.tolist() == [False, True]
    labels, markers, flags = label_anchored(_maps(own)[:, :7], params)  # the window's row 7 not in view
    assert flags.tolist() == [False, False]


def test_anchored_maps_store_probabilities_and_offsets_apart(tmp_path):
    import zarr

    image = zarr.create_array(tmp_path / "img.zarr", shape=(2, 8, 8), chunks=(2, 4, 4), dtype="uint8", fill_value=0)
    maps = AnchoredMaps.create(image, tmp_path / "anchors.zarr", 4)
    block = np.arange(4 * 4 * 4, dtype=np.uint8).reshape(4, 4, 4)
    maps[:, 4:8, 0:4] = block
    np.testing.assert_array_equal(image[:, 4:8, 0:4], block[:2])
    np.testing.assert_array_equal(maps[:, 4:8, 0:4], block)
    assert maps.shape == (4, 8, 8) and (maps[:, 0:4, 0:4][2:] == OFFSET_BIAS).all()
    again = AnchoredMaps.create(image, tmp_path / "anchors.zarr", 4)  # a resumed run reopens the offsets
    np.testing.assert_array_equal(again[:, 4:8, 0:4], block)


def _ds_card(**kw) -> ModelCard:
    base = {"name": "ds", "architecture": "lacss", "model_type": "detect-segment", "window_um": 24.0, "mpp": 0.5,
            "arch_kwargs": {"width": 8}}
    return ModelCard.from_dict({**base, **kw})


@pytest.mark.parametrize("changes, match", [
    ({"window_um": None}, "window_um"),
    ({"window_um": 300.0}, "240 px"),
    ({"model_type": "boxes"}, "model_type"),
    ({"architecture": "resnet34-unet"}, "lacss"),
])
def test_bad_detect_segment_cards_are_refused(changes, match):
    with pytest.raises(ModelCardError, match=match):
        _ds_card(**changes)


def test_model_type_is_in_the_identity_only_when_it_is_not_the_default():
    card = _ds_card()
    assert card.window_px() == 48 and card.window_px(0.25) == 96
    other = _ds_card(window_um=16.0)
    assert identity_sha256(card, None) != identity_sha256(other, None)
    dense = ModelCard(name="u", architecture="resnet34-unet", mpp=0.5)
    assert "model_type" in dense.to_dict() and dense.model_type == "dense-maps"
    legacy = dict(dense.to_dict())
    del legacy["model_type"], legacy["window_um"]  # a card written before issue 17
    assert identity_sha256(ModelCard.from_dict(legacy), None) == identity_sha256(dense, None)


PACKAGED_SHA256 = {  # identities before issue 17: adding the model type changed none of them
    "hematoxylin-baseline": "55c37a40399890b18d848d445e0865e68994c561554dffb271832ffb55946f34",
    "nuclei-points-v1": "2fc66b46482d813627592ef5cef200c3a938f6cc0d1ad66278351289a6e25d01",
    "nuclei-points-v2": "b5f0cacbdaa2a489d94a074a16d426ff0f745ccf4e1ef592640e6be17445fae6",
}


def test_packaged_models_keep_their_identity():
    assert set(PACKAGED_SHA256) <= set(available_models())
    for name, sha in PACKAGED_SHA256.items():
        model = load_model(name)
        assert model.card.model_type == "dense-maps" and model.sha256 == sha, name
        assert "model_type" not in json.loads((model.path / "card.json").read_text())
