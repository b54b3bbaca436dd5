"""Test-time augmentation averages the net over flips/transposes of the tile and maps them back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_weakseg.engine.inference import Predictor
from wsi_weakseg.model.card import ModelCard
from wsi_weakseg.model.resnet_unet import ResNet34UNet


@pytest.fixture(scope="module")
def predictor_parts():
    torch.manual_seed(0)
    net = ResNet34UNet(out_channels=2, width=8).eval()
    card = ModelCard(name="t", architecture="resnet34-unet", mpp=0.5, arch_kwargs={"width": 8}, tile_size=64)
    return net, card


def _probs(net, card, batch):
    p = Predictor(net, card, "cpu")
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(card.normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(card.normalization["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.sigmoid(p.net((x - mean) / std)[:, :2]).numpy()


def test_tta_equals_the_hand_average_of_flipped_predictions(predictor_parts):
    net, card = predictor_parts
    batch = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    flips = [lambda a: a, lambda a: a[:, :, ::-1], lambda a: a[:, ::-1], lambda a: a[:, ::-1, ::-1]]
    back = [lambda m: m, lambda m: m[..., ::-1], lambda m: m[..., ::-1, :], lambda m: m[..., ::-1, ::-1]]
    expected = np.mean([b(_probs(net, card, np.ascontiguousarray(f(batch)))) for f, b in zip(flips, back)], axis=0)
    got = Predictor(net, card, "cpu", tta=4)(batch)
    np.testing.assert_allclose(got.astype(float), np.round(expected * 255), atol=1)
    t_expected = (4 * expected + sum(
        b(_probs(net, card, np.ascontiguousarray(f(np.ascontiguousarray(batch.transpose(0, 2, 1, 3)))))).swapaxes(-1, -2)
        for f, b in zip(flips, back))) / 8
    np.testing.assert_allclose(Predictor(net, card, "cpu", tta=8)(batch).astype(float), np.round(t_expected * 255), atol=1)
    assert not np.array_equal(got, Predictor(net, card, "cpu")(batch))  # an untrained net is not flip-invariant


def test_tta_rejects_bad_settings(predictor_parts):
    net, card = predictor_parts
    with pytest.raises(ValueError, match="tta must be 1, 4 or 8"):
        Predictor(net, card, "cpu", tta=2)
    with pytest.raises(ValueError, match="square tiles"):
        Predictor(net, card, "cpu", tta=8)(np.zeros((1, 64, 96, 3), np.uint8))
