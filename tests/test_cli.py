"""The ``wsi-weakseg`` CLI on a small synthetic slide: outputs, determinism, provenance, info, models."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsi_weakseg import cli
from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.model.card import DEFAULT_MODEL
from wsi_weakseg.slide.testing import write_pyramid_tiff

MPP = 0.5


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb, _ = synthetic_he(size=(512, 768), mpp=MPP)
    return write_pyramid_tiff(tmp_path_factory.mktemp("slide") / "he.tiff", rgb, MPP)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def listing(folder: Path) -> list[str]:
    """Top-level entries of ``folder``, hidden ones included."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def first_run(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One segment run, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run") / "out"
    code = cli.main(["segment", str(slide), "-o", str(out), "--device", "cpu", "--no-progress"])
    assert code == 0
    return {"out": out, "geojson": (out / "he.geojson").read_bytes()}


def test_segment_writes_exactly_its_outputs(first_run):
    out = first_run["out"]
    assert listing(out) == ["he.geojson", "he.ome.zarr", "he.preview.png", "he.run.json"]
    fc = json.loads(first_run["geojson"])
    assert fc["type"] == "FeatureCollection"
    assert len(fc["features"]) > 20
    run_json = json.loads((out / "he.run.json").read_text())
    assert run_json["nuclei"] == len(fc["features"])


def test_segment_prints_json_summary(capsys, slide, tmp_path):
    code, out, err = run(capsys, "segment", slide, "-o", tmp_path / "o", "--no-progress")
    assert code == 0, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["nuclei"] > 0
    assert Path(summary["geojson"]) == tmp_path / "o" / "he.geojson"
    assert Path(summary["run"]).is_file()
    assert summary["pictures"] == [str(tmp_path / "o" / "he.preview.png")]


def test_run_json_provenance(first_run):
    run_json = json.loads((first_run["out"] / "he.run.json").read_text())
    for key in ("config", "versions", "model", "device", "timings_s", "nuclei", "tissue"):
        assert key in run_json, key
    assert len(run_json["model"]["sha256"]) == 64
    assert run_json["model"]["name"] == DEFAULT_MODEL and run_json["model"]["trained"] is True
    assert run_json["device"] == "cpu"
    assert run_json["config"]["tile_size"] == 512
    assert run_json["versions"]["numpy"] == np.__version__
    assert run_json["timings_s"]["total_s"] > 0
    assert run_json["tissue"]["area_mm2"] > 0
    assert run_json["slide"]["mpp"] == pytest.approx(MPP)


def test_rerun_into_same_output_is_identical(capsys, slide, first_run, tmp_path):
    import shutil

    import zarr

    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    before = zarr.open_group(str(out / "he.ome.zarr"), mode="r")["labels/nuclei/0"][:]
    preview = (out / "he.preview.png").read_bytes()
    code, _, err = run(capsys, "segment", slide, "-o", out, "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert listing(out) == ["he.geojson", "he.ome.zarr", "he.preview.png", "he.run.json"]  # no temp folders, no parked copies
    assert (out / "he.geojson").read_bytes() == first_run["geojson"]
    assert (out / "he.preview.png").read_bytes() == preview  # pictures are deterministic too
    after = zarr.open_group(str(out / "he.ome.zarr"), mode="r")["labels/nuclei/0"][:]
    assert after.dtype == before.dtype
    np.testing.assert_array_equal(after, before)
    assert after.max() == json.loads((out / "he.run.json").read_text())["nuclei"]


def test_compress_writes_gzipped_geojson(capsys, slide, first_run, tmp_path):
    out = tmp_path / "gz"
    code, _, err = run(capsys, "segment", slide, "-o", out, "--compress", "--no-progress")
    assert code == 0, err
    assert listing(out) == ["he.geojson.gz", "he.ome.zarr", "he.preview.png", "he.run.json"]
    with gzip.open(out / "he.geojson.gz", "rb") as fh:
        assert fh.read() == first_run["geojson"]


def test_switching_compress_removes_the_stale_geojson(capsys, slide, first_run, tmp_path):
    import shutil

    out = tmp_path / "switch"
    shutil.copytree(first_run["out"], out)
    code, _, err = run(capsys, "segment", slide, "-o", out, "--compress", "--no-progress")
    assert code == 0, err
    assert listing(out) == ["he.geojson.gz", "he.ome.zarr", "he.preview.png", "he.run.json"]
    code, _, err = run(capsys, "segment", slide, "-o", out, "--no-progress")
    assert code == 0, err
    assert listing(out) == ["he.geojson", "he.ome.zarr", "he.preview.png", "he.run.json"]
    assert (out / "he.geojson").read_bytes() == first_run["geojson"]


def test_tissue_rule_is_recorded(capsys, slide, first_run, tmp_path):
    auto = json.loads((first_run["out"] / "he.run.json").read_text())["tissue"]
    assert (auto["option"], auto["rule"]) == ("auto", "mask")
    assert 0 < auto["fraction"] < auto["selected_fraction"] < 1  # the area is the tissue, not the grown mask
    code, _, err = run(capsys, "segment", slide, "-o", tmp_path / "all", "--tissue", "all", "--no-progress")
    assert code == 0, err
    run_all = json.loads((tmp_path / "all" / "he.run.json").read_text())
    assert (run_all["tissue"]["rule"], run_all["tissue"]["selected_fraction"]) == ("all", 1.0)
    assert run_all["tissue"]["area_mm2"] == auto["area_mm2"]
    assert run_all["tiles"]["processed"] == run_all["tiles"]["total"]


def test_plain_image_is_segmented_whole(capsys, tmp_path):
    """A PNG is a crop the user chose: all of it runs, even glass with a few faint cells (0 nuclei is fine)."""
    from PIL import Image

    rgb = np.full((256, 256, 3), 243, np.uint8)
    rgb[100:104, 100:104] = (200, 150, 200)  # a speck the slide mask would drop
    Image.fromarray(rgb).save(tmp_path / "glass.png")
    code, out, err = run(capsys, "segment", tmp_path / "glass.png", "-o", tmp_path / "o", "--mpp", MPP,
                         "--no-progress")
    assert code == 0, err
    run_json = json.loads((tmp_path / "o" / "glass.run.json").read_text())
    assert run_json["tissue"]["rule"] == "all" and run_json["tiles"]["processed"] == 1


def test_maps_are_registered_to_the_slide(capsys, slide, tmp_path):
    """Declared 0.25 µm/px, the slide is read at the model's 0.5 µm/px: working pixel (0, 0) covers slide
    pixels 0 and 1 (centres 0 and 0.25 µm), so it is centred at 0.125 µm; image level 1 (2x2 means) sits
    a further half working pixel (0.25 µm) on, label level 1 (subsampled) does not move."""
    code, _, err = run(capsys, "segment", slide, "-o", tmp_path / "o", "--mpp", "0.25", "--no-progress")
    assert code == 0, err
    root = json.loads((tmp_path / "o" / "he.ome.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    image = root["multiscales"][0]["datasets"]
    assert image[0]["coordinateTransformations"][1]["translation"] == [0.0, 0.125, 0.125]
    assert image[1]["coordinateTransformations"][1]["translation"] == [0.0, 0.375, 0.375]
    labels = json.loads((tmp_path / "o" / "he.ome.zarr" / "labels" / "nuclei" / "zarr.json").read_text())
    datasets = labels["attributes"]["ome"]["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][1]["translation"] for d in datasets[:2]] == [[0.125, 0.125]] * 2
    run_json = json.loads((tmp_path / "o" / "he.run.json").read_text())
    assert run_json["nuclei_repaired"] == 0
    assert len(run_json["model"]["weights_sha256"]) == 64
    assert run_json["model"]["weights_sha256"] != run_json["model"]["sha256"]


def test_info_text(capsys, slide):
    code, out, err = run(capsys, "info", slide)
    assert code == 0, err
    assert "level 0: 768 x 512" in out
    assert "level 2: 192 x 128" in out
    assert "0.5000 µm/px" in out
    assert "mpp: 0.5" in out


def test_info_json(capsys, slide):
    code, out, err = run(capsys, "info", slide, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["mpp"] == pytest.approx(MPP)
    assert [(lv["width"], lv["height"]) for lv in info["levels"]] == [(768, 512), (384, 256), (192, 128)]


def test_models_lists_default(capsys):
    code, out, err = run(capsys, "models")
    assert code == 0, err
    assert "nuclei-points-v2 (default)" in out and "nuclei-points-v1: " in out and "hematoxylin-baseline: " in out and "UNTRAINED" in out
    assert "licence: CC BY-NC-SA 4.0" in out


def test_subprocess_info_and_version(slide, tmp_path):
    p = subprocess.run([sys.executable, "-m", "wsi_weakseg.cli", "info", str(slide), "--json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["levels"][0]["width"] == 768
    p = subprocess.run([sys.executable, "-m", "wsi_weakseg.cli", "--version"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("wsi-weakseg ")


def test_demo_keeps_its_slide_beside_the_outputs_and_says_where_the_preview_is(capsys, tmp_path):
    from PIL import Image

    from wsi_weakseg.slide import open_slide

    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "-o", out, "--model", "hematoxylin-baseline", "--no-progress")
    assert code == 0, err
    res = json.loads(stdout)
    slide = Path(res["slide"])
    assert slide.parent == out and slide.name == "demo-slide.tiff"
    with open_slide(slide) as s:  # what QuPath opens: a real pyramid with its pixel size
        assert s.mpp == pytest.approx(0.5) and s.level_count >= 2
    assert Path(res["preview"]) == out / "demo-slide.preview.png" and Image.open(res["preview"]).size[0] > 500
    assert Path(res["geojson"]).parent == out and res["nuclei_found"] > 0.8 * res["nuclei_drawn"]
    assert sorted(p.name for p in out.iterdir()) == ["demo-slide.geojson", "demo-slide.ome.zarr",
                                                     "demo-slide.preview.png", "demo-slide.run.json",
                                                     "demo-slide.tiff"]
