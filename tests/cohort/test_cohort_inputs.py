"""Which slides a cohort holds: folder search, manifest CSV, slide-id rules (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_weakseg.cli import main
from wsi_weakseg.cohort import find_slides
from wsi_weakseg.errors import CohortInputError, UserInputError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_search_is_recursive_and_skips_hidden_zarr_and_output(tmp_path):
    touch(tmp_path / "a.svs")
    touch(tmp_path / "site1" / "deep" / "B.NDPI")  # patterns ignore case
    touch(tmp_path / "site1" / "c.ome.tiff")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden" / "h.svs")
    touch(tmp_path / "old.ome.zarr" / "0" / "x.tif")
    touch(tmp_path / "out" / "a" / "leftover.tif")  # the output folder inside the input folder
    jobs = find_slides(tmp_path, exclude=tmp_path / "out")
    assert [(j.slide_id, j.path.relative_to(tmp_path).as_posix(), j.mpp) for j in jobs] == [
        ("B", "site1/deep/B.NDPI", None), ("a", "a.svs", None), ("c", "site1/c.ome.tiff", None)]
    assert [j.slide_id for j in find_slides(tmp_path, ["*.svs"], exclude=tmp_path / "out")] == ["a"]
    with pytest.raises(CohortInputError, match=r"no slides .*\*\.png"):
        find_slides(tmp_path, ["*.png"])


@pytest.mark.parametrize("names", [("x/s1.svs", "y/s1.tiff"), ("x/Case.svs", "y/case.svs")])
def test_colliding_ids_fail_before_any_work(tmp_path, names, capsys):
    for n in names:
        touch(tmp_path / "in" / n)
    with pytest.raises(CohortInputError, match="slide_id") as err:
        find_slides(tmp_path / "in")
    assert all(str(tmp_path / "in" / n) in str(err.value) for n in names)
    out = tmp_path / "out"
    assert main(["cohort", str(tmp_path / "in"), "-o", str(out), "--no-progress"]) == 2
    assert not out.exists()
    assert "would collide" in capsys.readouterr().err


def test_manifest_columns_paths_and_mpp(tmp_path):
    touch(tmp_path / "slides" / "a.svs")
    (tmp_path / "m.csv").write_text(
        "Path, MPP ,slide_id,diagnosis\n"
        "slides/a.svs,0.25,A-1,tumour\n"
        "\n"
        f"{tmp_path / 'slides' / 'a.svs'},,,normal\n"
    )
    jobs = find_slides(tmp_path / "m.csv")
    assert [(j.slide_id, j.path, j.mpp) for j in jobs] == [
        ("A-1", tmp_path / "slides" / "a.svs", 0.25), ("a", tmp_path / "slides" / "a.svs", None)]
    (tmp_path / "m.tsv").write_text("path\tslide_id\nslides/a.svs\tt1\n")
    assert [j.slide_id for j in find_slides(tmp_path / "m.tsv")] == ["t1"]


@pytest.mark.parametrize("text, match", [
    ("file,mpp\na.svs,0.5\n", "needs a 'path' column"),
    ("path,mpp\na.svs,0.5\nb.svs,-1\n", "line 3: mpp must be a positive number"),
    ("path,mpp\na.svs,nan\n", "line 2: mpp"),
    ("path,slide_id\na.svs,../escape\n", "not a safe folder name"),
    ("path,slide_id\na.svs,.hidden\n", "not a safe folder name"),
    ("path,slide_id\n,x\n", "empty path"),
    ("path,slide_id\na.svs,x\nb.svs,x\n", "would collide"),
])
def test_bad_manifests_are_typed_errors(tmp_path, text, match):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(CohortInputError, match=match) as err:
        find_slides(tmp_path / "m.csv")
    assert isinstance(err.value, UserInputError) and isinstance(err.value, ValueError)


def test_missing_or_unusable_input(tmp_path):
    with pytest.raises(CohortInputError, match="does not exist"):
        find_slides(tmp_path / "nope")
    touch(tmp_path / "slide.svs")
    with pytest.raises(CohortInputError, match="neither a folder nor a manifest"):
        find_slides(tmp_path / "slide.svs")
