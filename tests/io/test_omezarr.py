"""Tests of wsi_weakseg.io.omezarr: pyramids against numpy oracles, OME-Zarr 0.5 metadata, validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from wsi_weakseg.errors import ConfigError, OutputError
from wsi_weakseg.io.omezarr import OmeZarrWriter, grid_translation_um, validate_ome_zarr

SHAPE = (700, 500)
MPP = 0.5
CHANNELS = ["foreground", "centre"]
LEVEL_SHAPES = [(700, 500), (350, 250), (175, 125), (88, 63)]  # min_size=100, halving rounds up


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    image = rng.integers(0, 256, (len(CHANNELS), *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 2**32 - 1, SHAPE, dtype=np.uint32)
    return image, labels


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finalized store written the way the engine does: blocks, in a scattered order."""
    path = tmp_path_factory.mktemp("omezarr") / "slide.ome.zarr"
    image, labels = _data()
    writer = OmeZarrWriter(path, SHAPE, MPP, CHANNELS, chunk=128, label_chunk=96, name="slide")
    blocks = [(y, x) for y in range(0, SHAPE[0], 128) for x in range(0, SHAPE[1], 128)]
    for y, x in reversed(blocks):
        writer.image[:, y : y + 128, x : x + 128] = image[:, y : y + 128, x : x + 128]
        writer.labels["nuclei"][y : y + 128, x : x + 128] = labels[y : y + 128, x : x + 128]
    writer.finalize(min_size=100)
    return path


def _copy(store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store, tmp_path / "copy.ome.zarr"))


def _mean_oracle(level: np.ndarray) -> np.ndarray:
    """2x2 mean of the pixels that exist (odd edges), rounded half up, one output pixel at a time."""
    c, h, w = level.shape
    out = np.zeros((c, (h + 1) // 2, (w + 1) // 2), dtype=np.uint8)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            block = level[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(np.float64)
            out[:, i, j] = np.floor(block.mean(axis=(1, 2)) + 0.5)
    return out


# ---------------------------------------------------------------- arrays and pyramids


def test_level0_arrays_match_the_contract(tmp_path: Path) -> None:
    writer = OmeZarrWriter(tmp_path / "s.zarr", SHAPE, MPP, CHANNELS, chunk=128)
    assert writer.image.shape == (2, *SHAPE) and writer.image.dtype == np.uint8
    assert writer.image.chunks == (1, 128, 128)
    assert list(writer.image.metadata.dimension_names) == ["c", "y", "x"]
    label = writer.labels["nuclei"]
    assert label.shape == SHAPE and label.dtype == np.uint32 and label.chunks == (128, 128)
    assert list(label.metadata.dimension_names) == ["y", "x"]
    assert set(writer.labels) == {"nuclei"}
    # before finalize the store is already a valid single-level image
    assert validate_ome_zarr(tmp_path / "s.zarr") == []


def test_pyramid_shapes_and_scales(store: Path) -> None:
    root = zarr.open_group(store, mode="r")
    assert [root[str(k)].shape for k in range(4)] == [(2, *s) for s in LEVEL_SHAPES]
    assert "4" not in root
    assert [root[f"labels/nuclei/{k}"].shape for k in range(4)] == LEVEL_SHAPES
    assert all(root[str(k)].chunks == (1, 128, 128) for k in range(4))
    assert all(root[f"labels/nuclei/{k}"].chunks == (96, 96) for k in range(4))
    datasets = root.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
    transforms = [d["coordinateTransformations"] for d in datasets]
    assert [t[0] for t in transforms] == [{"type": "scale", "scale": [1.0, MPP * 2**k, MPP * 2**k]} for k in range(4)]
    # no offset given: level 0 centred at 0; mean pooling moves level k by (2**k - 1) / 2 working pixels
    shifts = [0.0, 0.25, 0.75, 1.75]
    assert [t[1] for t in transforms] == [{"type": "translation", "translation": [0.0, d, d]} for d in shifts]


def test_level0_holds_what_was_written(store: Path) -> None:
    image, labels = _data()
    root = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(root["0"][:], image)
    np.testing.assert_array_equal(root["labels/nuclei/0"][:], labels)


def test_image_levels_are_rounded_2x2_means(store: Path) -> None:
    root = zarr.open_group(store, mode="r")
    level0 = root["0"][:]
    # even level: a vectorised oracle
    expected1 = np.floor(level0.reshape(2, 350, 2, 250, 2).astype(np.float64).mean(axis=(2, 4)) + 0.5)
    np.testing.assert_array_equal(root["1"][:], expected1.astype(np.uint8))
    # odd levels (175 x 125 -> 88 x 63): edges average the pixels that exist
    np.testing.assert_array_equal(root["3"][:], _mean_oracle(root["2"][:]))
    np.testing.assert_array_equal(root["2"][:], _mean_oracle(root["1"][:]))


def test_rounding_is_half_up(tmp_path: Path) -> None:
    writer = OmeZarrWriter(tmp_path / "r.zarr", (2, 8), 1.0, ["p"], chunk=4)
    writer.image[0] = np.array([[1, 1, 1, 2, 0, 0, 254, 255], [2, 2, 2, 2, 0, 1, 255, 255]], dtype=np.uint8)
    writer.finalize(min_size=4)
    out = zarr.open_group(tmp_path / "r.zarr", mode="r")["1"][:]
    assert out.tolist() == [[[2, 2, 0, 255]]]  # 1.5 -> 2, 1.75 -> 2, 0.25 -> 0, 254.75 -> 255


def test_label_levels_are_nearest(store: Path) -> None:
    root = zarr.open_group(store, mode="r")
    level0 = root["labels/nuclei/0"][:]
    for k in range(1, 4):
        np.testing.assert_array_equal(root[f"labels/nuclei/{k}"][:], root[f"labels/nuclei/{k - 1}"][:][::2, ::2])
        np.testing.assert_array_equal(root[f"labels/nuclei/{k}"][:], level0[:: 2**k, :: 2**k])


def test_small_image_has_one_level_and_unwritten_chunks_read_zero(tmp_path: Path) -> None:
    writer = OmeZarrWriter(tmp_path / "small.zarr", (60, 40), 0.25, ["foreground"], chunk=32)
    writer.finalize()
    root = zarr.open_group(tmp_path / "small.zarr", mode="r")
    assert len(root.attrs["ome"]["multiscales"][0]["datasets"]) == 1
    assert not root["0"][:].any()
    assert validate_ome_zarr(tmp_path / "small.zarr") == []


# ---------------------------------------------------------------- metadata


def test_metadata_follows_ome_zarr_05(store: Path) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    assert doc["zarr_format"] == 3 and doc["node_type"] == "group"
    ome = doc["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert "version" not in ms  # 0.5 keeps the version only in ome.version
    assert ms["name"] == "slide"
    assert ms["axes"] == [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    channels = ome["omero"]["channels"]
    assert [c["label"] for c in channels] == CHANNELS
    for c in channels:
        assert len(c["color"]) == 6 and int(c["color"], 16) >= 0
        assert c["window"] == {"min": 0, "max": 255, "start": 0, "end": 255}
    labels = json.loads((store / "labels" / "zarr.json").read_text())
    assert labels["attributes"] == {"ome": {"version": "0.5", "labels": ["nuclei"]}}
    nuclei = json.loads((store / "labels" / "nuclei" / "zarr.json").read_text())["attributes"]["ome"]
    assert nuclei["version"] == "0.5"
    assert nuclei["image-label"]["source"] == {"image": "../../"}
    assert [a["name"] for a in nuclei["multiscales"][0]["axes"]] == ["y", "x"]
    assert nuclei["multiscales"][0]["datasets"][3]["coordinateTransformations"] == [
        {"type": "scale", "scale": [MPP * 8, MPP * 8]}, {"type": "translation", "translation": [0.0, 0.0]}
    ]
    array = json.loads((store / "labels" / "nuclei" / "0" / "zarr.json").read_text())
    assert array["data_type"] == "uint32" and array["dimension_names"] == ["y", "x"]
    assert any(codec["name"] in ("blosc", "zstd") for codec in array["codecs"])


def test_validate_accepts_the_written_store(store: Path) -> None:
    assert validate_ome_zarr(store) == []


def test_independent_validator_accepts_the_store(store: Path) -> None:
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    root = zarr.open_group(store, mode="r")
    image = Image.from_zarr(root)
    assert [d.path for d in image.ome_attributes.multiscales[0].datasets] == ["0", "1", "2", "3"]
    assert Labels.from_zarr(root["labels"]).ome_attributes.labels == ["nuclei"]
    label = ImageLabel.from_zarr(root["labels/nuclei"])
    assert label.ome_attributes.image_label.source.image == "../../"


def _edit(path: Path, node: str, change: Any) -> None:
    group = zarr.open_group(path / node if node else path, mode="r+")
    attrs = group.attrs.asdict()
    change(attrs["ome"])
    group.attrs.put(attrs)


@pytest.mark.parametrize(
    ("node", "change", "match"),
    [
        ("", lambda ome: ome.update(version="0.4"), "ome.version"),
        ("", lambda ome: ome.pop("multiscales"), "multiscales"),
        ("", lambda ome: ome["multiscales"][0]["axes"][1].update(unit="micron"), "unit"),
        ("", lambda ome: ome["multiscales"][0]["axes"].reverse(), "ordered"),
        ("", lambda ome: ome["multiscales"][0]["axes"].pop(0), "dimensions"),
        ("", lambda ome: ome["multiscales"][0]["datasets"][2].update(path="7"), "does not exist"),
        ("", lambda ome: ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][0].update(scale=[1.0, -1.0, 1.0]), "positive"),
        ("", lambda ome: ome["multiscales"][0]["datasets"][2]["coordinateTransformations"][0].update(scale=[1.0, 4.0, 4.0]), "inconsistent"),
        ("", lambda ome: ome["multiscales"][0]["datasets"][1].update(coordinateTransformations=[{"type": "translation", "translation": [0, 0, 0]}]), "scale"),
        ("", lambda ome: ome["omero"]["channels"].pop(), "channels"),
        ("labels", lambda ome: ome.update(labels=["nuclei", "cells"]), "labels/cells"),
        ("labels/nuclei", lambda ome: ome.pop("image-label"), "image-label"),
        ("labels/nuclei", lambda ome: ome.update(version="0.4"), "labels/nuclei: ome.version"),
        ("labels/nuclei", lambda ome: ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][1].update(translation=[0.0, 0.5]), "translation"),
        ("", lambda ome: ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][1].update(translation=[0.0, 0.25, 0.0]), "would not overlay"),
        ("", lambda ome: ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][1].update(translation=[0.0, 0.0]), "translation must list 3"),
    ],
)
def test_validate_reports_corruption(store: Path, tmp_path: Path, node: str, change: Any, match: str) -> None:
    path = _copy(store, tmp_path)
    _edit(path, node, change)
    problems = validate_ome_zarr(path)
    assert problems, "corruption not reported"
    assert any(match in p for p in problems), problems


def test_validate_reports_missing_level_and_not_a_store(store: Path, tmp_path: Path) -> None:
    path = _copy(store, tmp_path)
    shutil.rmtree(path / "labels" / "nuclei" / "2")
    assert any("labels/nuclei" in p and "does not exist" in p for p in validate_ome_zarr(path))
    assert validate_ome_zarr(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    zarr.create_group(store=str(tmp_path / "plain"), zarr_format=3)
    assert any("'ome'" in p for p in validate_ome_zarr(tmp_path / "plain"))
    v2 = tmp_path / "v2.zarr"
    zarr.create_group(store=str(v2), zarr_format=2)
    assert any("zarr_format" in p for p in validate_ome_zarr(v2))


def test_validate_reports_float_labels(tmp_path: Path) -> None:
    path = tmp_path / "f.zarr"
    OmeZarrWriter(path, (64, 64), 1.0, ["p"], chunk=32)
    zarr.open_group(path / "labels" / "nuclei", mode="r+").create_array("0", shape=(64, 64), dtype="float32", dimension_names=["y", "x"], overwrite=True)
    assert any("integer dtype" in p for p in validate_ome_zarr(path))


# ---------------------------------------------------------------- registration


def test_registration_hand_worked(tmp_path: Path) -> None:
    """Working grid 0.5 µm/px, 10 level-0 px (y) and 4 px (x) into a 0.25 µm/px slide; levels 0..2.

    Slide pixel i is centred at i * 0.25 µm (NGFF). Working pixel 0 spans slide [10, 12) in y, centred at
    slide index 10.5 -> 2.625 µm; in x [4, 6) -> index 4.5 -> 1.125 µm. Image level 1 pixel 0 = mean of
    working pixels 0, 1 = slide [10, 14) -> index 11.5 -> 2.875 (x: [4, 8) -> 5.5 -> 1.375). Level 2 = slide
    [10, 18) -> 13.5 -> 3.375 (x: [4, 12) -> 7.5 -> 1.875). Label level k = level0[::2**k] keeps working
    pixel 0 -> 2.625 / 1.125 at every level.
    """
    t0 = grid_translation_um((10, 4), 2.0, 0.25)
    assert t0 == pytest.approx((2.625, 1.125))
    path = tmp_path / "reg.ome.zarr"
    writer = OmeZarrWriter(path, (16, 12), 0.5, ["p"], chunk=8, translation_um=t0)
    writer.finalize(min_size=4)
    root = zarr.open_group(path, mode="r")
    image = [d["coordinateTransformations"] for d in root.attrs["ome"]["multiscales"][0]["datasets"]]
    labels = [d["coordinateTransformations"] for d in root["labels/nuclei"].attrs["ome"]["multiscales"][0]["datasets"]]
    assert len(image) == len(labels) == 3
    assert [t[0]["scale"] for t in image] == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    assert [t[1]["translation"] for t in image] == [
        pytest.approx([0.0, 2.625, 1.125]), pytest.approx([0.0, 2.875, 1.375]), pytest.approx([0.0, 3.375, 1.875])
    ]
    assert [t[0]["scale"] for t in labels] == [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]
    assert [t[1]["translation"] for t in labels] == [pytest.approx([2.625, 1.125])] * 3
    assert validate_ome_zarr(path) == []


def test_registration_matches_the_pixels(tmp_path: Path) -> None:
    """Each level's declared pixel centres equal the centres of the working pixels it was made from."""
    rng = np.random.default_rng(3)
    path = tmp_path / "pix.ome.zarr"
    mpp, t0 = 0.5, (2.625, 1.125)
    writer = OmeZarrWriter(path, (32, 32), mpp, ["p"], chunk=16, translation_um=t0)
    # a ramp in y: a mean-pooled pixel's value is the mean working row index it covers (times 4)
    writer.image[0] = np.repeat(np.arange(32, dtype=np.uint8)[:, None] * 4, 32, axis=1)
    writer.labels["nuclei"][:] = rng.integers(1, 1000, (32, 32), dtype=np.uint32)
    writer.finalize(min_size=4)
    root = zarr.open_group(path, mode="r")
    image = root.attrs["ome"]["multiscales"][0]["datasets"]
    labels = root["labels/nuclei"].attrs["ome"]["multiscales"][0]["datasets"]
    level0 = root["labels/nuclei/0"][:]
    for k in range(1, len(image)):
        (scale, translation) = (image[k]["coordinateTransformations"][i] for i in (0, 1))
        rows = root[str(k)][0, :, 0].astype(float) / 4  # mean working row of each level-k row
        declared = translation["translation"][1] + np.arange(rows.size) * scale["scale"][1]
        np.testing.assert_allclose(declared, t0[0] + rows * mpp, atol=0.13 * mpp)  # uint8 rounding of the mean
        lt = labels[k]["coordinateTransformations"]
        j = np.arange(root[f"labels/nuclei/{k}"].shape[0])
        src = np.rint((lt[1]["translation"][0] + j * lt[0]["scale"][0] - t0[0]) / mpp).astype(int)
        np.testing.assert_array_equal(root[f"labels/nuclei/{k}"][:, 0], level0[src, 0])


# ---------------------------------------------------------------- errors


def test_writer_refuses_existing_or_unwritable_output(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(OutputError, match="already exists"):
        OmeZarrWriter(tmp_path / "busy", SHAPE, MPP, CHANNELS)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError):
        OmeZarrWriter(tmp_path / "a-file" / "s.zarr", SHAPE, MPP, CHANNELS)
    # an existing empty folder (made by the engine) is fine
    (tmp_path / "empty").mkdir()
    OmeZarrWriter(tmp_path / "empty", SHAPE, MPP, CHANNELS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape_yx": (0, 10)},
        {"mpp": 0.0},
        {"mpp": float("nan")},
        {"channels": []},
        {"channels": ["a", "a"]},
        {"chunk": 0},
        {"labels": ("a/b",)},
        {"labels": ("n", "n")},
        {"translation_um": (0.0, float("inf"))},
        {"translation_um": (0.0,)},
    ],
)
def test_writer_rejects_bad_config(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"shape_yx": SHAPE, "mpp": MPP, "channels": CHANNELS}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        OmeZarrWriter(tmp_path / "s.zarr", **args)
    assert not (tmp_path / "s.zarr").exists()
