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


def test_segment_writes_exactly_three_outputs(first_run):
    out = first_run["out"]
    assert listing(out) == ["he.geojson", "he.ome.zarr", "he.run.json"]
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
    code, _, err = run(capsys, "segment", slide, "-o", out, "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert listing(out) == ["he.geojson", "he.ome.zarr", "he.run.json"]  # no temp folders, no parked copies
    assert (out / "he.geojson").read_bytes() == first_run["geojson"]
    after = zarr.open_group(str(out / "he.ome.zarr"), mode="r")["labels/nuclei/0"][:]
    assert after.dtype == before.dtype
    np.testing.assert_array_equal(after, before)
    assert after.max() == json.loads((out / "he.run.json").read_text())["nuclei"]


def test_compress_writes_gzipped_geojson(capsys, slide, first_run, tmp_path):
    out = tmp_path / "gz"
    code, _, err = run(capsys, "segment", slide, "-o", out, "--compress", "--no-progress")
    assert code == 0, err
    assert listing(out) == ["he.geojson.gz", "he.ome.zarr", "he.run.json"]
    with gzip.open(out / "he.geojson.gz", "rb") as fh:
        assert fh.read() == first_run["geojson"]


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
