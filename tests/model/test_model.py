"""ResNet34-UNet, torchvision weight loading, the baseline's locality, model cards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsi_weakseg.errors import ModelCardError
from wsi_weakseg.model.card import (BASELINE_MODEL, DEFAULT_MODEL, ModelCard, available_models, export_model,
                                    identity_sha256, load_model, save_model)
from wsi_weakseg.model.resnet_unet import ResNet34UNet, load_torchvision_encoder


def test_encoder_is_resnet34():
    """torchvision's resnet34 has 21,797,672 parameters, 513,000 of them in the fc classifier."""
    net = ResNet34UNet(out_channels=2)
    n = sum(p.numel() for p in net.encoder.parameters())
    assert n == 21_797_672 - 513_000
    assert [len(getattr(net.encoder, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def test_forward_shape_and_stride_check():
    net = ResNet34UNet(out_channels=3, width=4).eval()
    with torch.inference_mode():
        assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 3, 64, 96)
        with pytest.raises(ValueError, match="multiple of 32"):
            net(torch.zeros(1, 3, 50, 64))


def test_features_for_a_recipe_head_leave_the_logits_unchanged():
    """Issue 16's projector reads decoder stage 2 (stride 4); forward() must stay what it was."""
    torch.manual_seed(0)
    net = ResNet34UNet(out_channels=2, width=8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, feats = net.forward_with_features(x, 2)
        assert torch.equal(logits, net(x))
    assert feats.shape == (1, 8, 16, 16)
    with pytest.raises(ValueError, match="decoder stage"):
        net.forward_with_features(x, 5)


def test_loads_torchvision_state_dict(tmp_path):
    """A state_dict with torchvision's key names (incl. fc.*) fills the encoder exactly."""
    torch.manual_seed(1)
    src = ResNet34UNet(out_channels=2)
    state = {k: v.clone() for k, v in src.encoder.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet34.pth")
    torch.manual_seed(2)
    dst = ResNet34UNet(out_channels=2)
    unused = load_torchvision_encoder(dst, tmp_path / "resnet34.pth")
    assert sorted(unused) == ["fc.bias", "fc.weight"]
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision resnet34"):
        load_torchvision_encoder(dst, tmp_path / "bad.pth")


def test_baseline_output_depends_only_on_pixels_within_its_radius():
    net = load_model(BASELINE_MODEL).net
    r = net.receptive_radius
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (1, 3, 96, 96)).astype(np.float32) / 255.0)
    y0 = net(x)
    x2 = x.clone()
    x2[0, :, 48, 48] = 0.0  # a dark pixel
    diff = (net(x2) - y0).abs().sum(dim=(0, 1)) > 0
    ys, xs = np.nonzero(diff.numpy())
    assert ys.size > 0
    assert max(abs(ys - 48).max(), abs(xs - 48).max()) <= r


def test_card_roundtrip_and_sha_check(tmp_path):
    torch.manual_seed(0)
    card = ModelCard(name="t", architecture="resnet34-unet", mpp=0.5, arch_kwargs={"width": 4}, tile_size=64)
    folder = save_model(tmp_path / "m", card, ResNet34UNet(out_channels=2, width=4))
    model = load_model(folder)
    assert model.card.weights_sha256 and model.weights_sha256 == model.card.weights_sha256
    assert model.sha256 == identity_sha256(model.card, model.card.weights_sha256) != model.card.weights_sha256
    x = torch.rand(1, 3, 64, 64)
    ref = ResNet34UNet(out_channels=2, width=4)
    ref.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    with torch.inference_mode():
        assert torch.equal(model.net(x), ref.eval()(x))
    raw = bytearray((folder / "weights.pt").read_bytes())
    raw[-10] ^= 0xFF
    (folder / "weights.pt").write_bytes(bytes(raw))
    with pytest.raises(ModelCardError, match="sha256"):
        load_model(folder)


def test_export_half_precision_keeps_predictions(tmp_path):
    torch.manual_seed(0)
    card = ModelCard(name="t", architecture="resnet34-unet", mpp=0.5, arch_kwargs={"width": 8}, tile_size=64)
    net = ResNet34UNet(out_channels=2, width=8)
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    src = save_model(tmp_path / "m", card, net)
    dst = export_model(src, tmp_path / "half", name="t-half", license="CC BY-NC-SA 4.0", thresholds={**card.thresholds, "foreground": 0.4})
    half = torch.load(dst / "weights.pt", weights_only=True)
    full = torch.load(src / "weights.pt", weights_only=True)
    assert {k: v.dtype for k, v in half.items() if v.is_floating_point()} == {
        k: torch.float16 for k, v in full.items() if v.is_floating_point()}
    assert all(half[k].dtype == v.dtype for k, v in full.items() if not v.is_floating_point())  # BN counters stay ints
    assert (dst / "weights.pt").stat().st_size < 0.6 * (src / "weights.pt").stat().st_size
    model = load_model(dst)
    assert model.card.name == "t-half" and model.card.license == "CC BY-NC-SA 4.0"
    assert model.card.thresholds["foreground"] == 0.4 and model.sha256 != load_model(src).sha256
    assert all(p.dtype == torch.float32 for p in model.net.parameters())  # computes in float32
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        a, b = torch.sigmoid(load_model(src).net(x)), torch.sigmoid(model.net(x))
    assert 0 < (a - b).abs().max() < 5e-3


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"colour": 1}, "unknown model-card keys"),
        ({"tile_size": 100}, "multiple of 32"),
        ({"mpp": -1}, "mpp"),
        ({"architecture": "vit"}, "unknown architecture"),
    ],
)
def test_bad_cards_are_rejected(tmp_path, patch, match):
    data = load_model(DEFAULT_MODEL).card.to_dict() | patch
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match=match):
        load_model(tmp_path)


def _tiny(tmp_path, **fields):
    torch.manual_seed(0)
    card = ModelCard(name="t", architecture="resnet34-unet", mpp=0.5, arch_kwargs={"width": 4}, tile_size=64, **fields)
    return save_model(tmp_path / "m", card, ResNet34UNet(out_channels=2, width=4))


def _edit_card(folder, **changes):
    data = json.loads((folder / "card.json").read_text()) | changes
    (folder / "card.json").write_text(json.dumps(data))


def test_identity_covers_result_affecting_card_fields_not_prose(tmp_path):
    folder = _tiny(tmp_path)
    base = load_model(folder).sha256
    _edit_card(folder, description="edited prose", name="renamed", license="MIT", metrics={"aji": 0.9})
    assert load_model(folder).sha256 == base
    card = load_model(folder).card
    for change in ({"thresholds": {**card.thresholds, "foreground": 0.45}}, {"mpp": 0.25},
                   {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}, {"max_reach_um": 30.0},
                   {"context_px": 96}, {"trained": False}):
        edited = tmp_path / f"m-{next(iter(change))}"
        edited.mkdir()
        (edited / "weights.pt").write_bytes((folder / "weights.pt").read_bytes())
        (edited / "card.json").write_text((folder / "card.json").read_text())
        _edit_card(edited, **change)
        assert load_model(edited).sha256 != base, change


def test_identity_covers_the_weights_even_without_their_sha_in_the_card(tmp_path):
    folder = _tiny(tmp_path)
    _edit_card(folder, weights_sha256=None)
    before = load_model(folder).sha256
    torch.manual_seed(5)
    torch.save(ResNet34UNet(out_channels=2, width=4).state_dict(), folder / "weights.pt")
    assert load_model(folder).sha256 != before


@pytest.mark.parametrize("name", ["../outside.pt", "/etc/passwd", "sub/weights.pt", "..\\w.pt", "", "..", "C:w.pt"])
def test_weights_must_be_a_bare_file_name_refused_before_reading(tmp_path, monkeypatch, name):
    import wsi_weakseg.model.card as card_module

    folder = _tiny(tmp_path / "in")
    (folder.parent / "outside.pt").write_bytes((folder / "weights.pt").read_bytes())
    _edit_card(folder, weights=name)

    def no_read(*args, **kwargs):
        raise AssertionError("a weights file was read")

    monkeypatch.setattr(card_module, "file_sha256", no_read)
    monkeypatch.setattr(card_module.torch, "load", no_read)
    with pytest.raises(ModelCardError, match="bare name of a file in the model folder"):
        load_model(folder)


def test_packaged_models():
    assert DEFAULT_MODEL in available_models() and BASELINE_MODEL in available_models()
    card = load_model(BASELINE_MODEL).card
    assert card.trained is False and "UNTRAINED" in card.description
    with pytest.raises(ModelCardError, match="packaged models"):
        load_model("no-such-model")


def test_baseline_card_context_is_the_measured_one(shared_data):
    """The packaged card's context is what measure_context finds: the smallest candidate with tiled == whole."""
    from PIL import Image

    from wsi_weakseg.engine.inference import Predictor
    from wsi_weakseg.model.context import measure_context

    model = load_model(BASELINE_MODEL)
    path = sorted((shared_data / "monuseg-train" / "images").glob("*.png"))[0]
    image = np.asarray(Image.open(path).convert("RGB"))[:600:2, :600:2].copy()
    context, steps = measure_context(Predictor(model.net, model.card, "cpu"), [image], tile=64, tolerance=0.0,
                                     candidates=(0, 32, 64))
    assert context == model.card.context_px == 32
    assert steps[0].max_abs > 0 and steps[1].max_abs == 0.0


def test_former_card_key_max_nucleus_um_is_read_and_keeps_the_identity():
    """max_nucleus_um (a misleading name: it is a geodesic reach, not a diameter) still loads, same sha256."""
    base = ModelCard(name="m", architecture="hematoxylin-baseline", mpp=0.5).to_dict()
    legacy = {k: v for k, v in base.items() if k != "max_reach_um"} | {"max_nucleus_um": 20.0}
    old, new = ModelCard.from_dict(legacy), ModelCard.from_dict(base)
    assert old == new and old.max_reach_um == 20.0
    assert identity_sha256(old, None) == identity_sha256(new, None)
    assert identity_sha256(ModelCard.from_dict({**base, "max_reach_um": 21.0}), None) != identity_sha256(new, None)
    with pytest.raises(ModelCardError, match="former name"):
        ModelCard.from_dict({**base, "max_nucleus_um": 20.0})


def test_context_images_tiles_small_images_into_mosaics():
    from wsi_weakseg.model.context import context_images

    rng = np.random.default_rng(0)
    big = [rng.integers(0, 256, (300, 280, 3), dtype=np.uint8) for _ in range(3)]
    assert [m is b for m, b in zip(context_images(big), big[:2], strict=True)] == [True, True]
    # 9 small images of unequal size: not 2 x 2 (2 * 100 < 256), one 3 x 3 mosaic of the common 100 x 120 crop
    small = [rng.integers(0, 256, (100 + i, 120 + 2 * i, 3), dtype=np.uint8) for i in range(9)]
    (mosaic,) = context_images(small)
    assert mosaic.shape == (300, 360, 3)
    for i, im in enumerate(small):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(mosaic[r * 100 : (r + 1) * 100, c * 120 : (c + 1) * 120], im[:100, :120])
    assert context_images(small[:3]) == [] and context_images([]) == []
