"""Failure modes of the ``wsi-weakseg`` CLI, run through the real entry point.

Every failure must give the documented exit code (2 bad input or usage, 1 processing failure), a short
message on stderr that says what to do, no traceback, and leave the output folder as it was: absent when
it did not exist before the run, otherwise with exactly its previous content (no temporary folders).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsi_weakseg import cli
from wsi_weakseg.engine.resume import PARTIAL_PREFIX
from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.errors import ProcessingError
from wsi_weakseg.slide.testing import write_pyramid_tiff

MPP = 0.5


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small test inputs, written once for the module."""
    d = tmp_path_factory.mktemp("slides")
    rgb, _ = synthetic_he(size=(512, 768), mpp=MPP)
    good = write_pyramid_tiff(d / "good.tiff", rgb, MPP)
    out = {"good": good}
    out["empty"] = d / "empty.svs"
    out["empty"].write_bytes(b"")
    out["corrupt"] = d / "corrupt.svs"
    out["corrupt"].write_bytes(np.random.default_rng(0).bytes(20_000))
    data = good.read_bytes()
    out["truncated"] = d / "truncated.tiff"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["text"] = d / "notes.txt"
    out["text"].write_text("this is not a slide\n")
    out["nompp_tiff"] = write_pyramid_tiff(d / "nompp.tiff", rgb[:256, :256], None, levels=2)
    from PIL import Image

    out["nompp_png"] = d / "nompp.png"
    Image.fromarray(rgb[:128, :128]).save(out["nompp_png"])  # PIL writes no pHYs chunk by default
    out["white"] = write_pyramid_tiff(d / "white.tiff", np.full((256, 384, 3), 255, np.uint8), MPP, levels=2)
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """``cli.main`` in-process; argparse usage errors (SystemExit) count as their exit code."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse rejects bad flags itself
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, str] | None:
    """Relative path -> content hash ("<dir>" for folders) of everything under ``folder``; None if absent."""
    if not folder.exists():
        return None
    snap: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        snap[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def published(snap: dict[str, str] | None) -> dict[str, str] | None:
    """A :func:`snapshot` without the hidden working folder a failed run keeps for resuming (engine.resume)."""
    return None if snap is None else {k: v for k, v in snap.items() if not k.startswith(PARTIAL_PREFIX)} or None


def kept_partial(folder: Path, stem: str) -> Path:
    """The working folder a failed run kept: its key and the finished tiles, nothing published."""
    partial = folder / f"{PARTIAL_PREFIX}{stem}"
    assert (partial / "key.txt").is_file() and (partial / "tiles.log").read_text().strip()
    return partial


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower()]


def check_failure(code: int, err: str, expected: int, *fragments: str) -> str:
    """Exit code, no traceback, exactly one error line containing every fragment (case-insensitive)."""
    assert code == expected, f"exit code {code}, expected {expected}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one error line, got {lines!r}\nstderr:\n{err}"
    line = lines[0]
    assert len(line) < 400, line
    for frag in fragments:
        assert frag.lower() in line.lower(), f"{frag!r} not in {line!r}"
    return line


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An output folder that does not exist yet."""
    return tmp_path / "out"


@pytest.fixture
def existing_out(tmp_path: Path) -> Path:
    """An output folder that already holds a file and a sub-folder."""
    d = tmp_path / "existing"
    (d / "sub").mkdir(parents=True)
    (d / "keep.txt").write_text("precious\n")
    (d / "sub" / "x.bin").write_bytes(b"\x00\x01")
    return d


# --------------------------------------------------------------------------------------------- slides


@pytest.mark.parametrize(
    ("key", "fragments"),
    [
        ("missing", ("not found",)),
        ("empty", ("empty",)),
        ("corrupt", ("not a slide or image format",)),
        ("truncated", ("corrupt or truncated",)),
        ("text", ("not a slide or image format",)),
    ],
)
def test_unreadable_slides_exit_2(capsys, slides, out_dir, existing_out, key, fragments):
    path = slides[key] if key != "missing" else slides["good"].parent / "missing.svs"
    for target in (out_dir, existing_out):
        before = snapshot(target)
        code, out, err = run(capsys, "segment", path, "-o", target, "--device", "cpu")
        check_failure(code, err, 2, str(path.name), *fragments)
        assert out == ""
        assert snapshot(target) == before


def test_slide_corrupt_mid_run(capsys, slides, tmp_path, out_dir, existing_out):
    """A slide that opens but has a garbled level-0 tile fails during inference: exit 2, nothing left."""
    import tifffile

    rgb, _ = synthetic_he(size=(512, 768), mpp=MPP)
    path = write_pyramid_tiff(tmp_path / "garbled.tiff", rgb, MPP, compression="jpeg")
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages[0].dataoffsets[1], tf.pages[0].databytecounts[1]
    blob = bytearray(path.read_bytes())
    blob[offset + count // 4 : offset + count] = b"\xff" * (count - count // 4)
    path.write_bytes(bytes(blob))
    for target in (out_dir, existing_out):
        before = snapshot(target)
        code, _, err = run(capsys, "segment", path, "-o", target)
        check_failure(code, err, 2, "garbled.tiff", "cannot read")
        assert snapshot(target) == before


def test_huge_png_header_fails_fast_exit_2(capsys, tmp_path, out_dir, existing_out):
    """A PNG whose header claims 100000 x 100000 pixels is refused before decoding (no 30 GB allocation)."""
    import struct
    import time
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    for target in (out_dir, existing_out):
        before = snapshot(target)
        t0 = time.perf_counter()
        code, _, err = run(capsys, "segment", path, "--mpp", "0.5", "-o", target)
        assert time.perf_counter() - t0 < 5.0
        check_failure(code, err, 2, "huge.png", "too large", "pyramidal TIFF")
        assert snapshot(target) == before


@pytest.mark.parametrize("key", ["nompp_tiff", "nompp_png"])
def test_missing_mpp_asks_for_flag(capsys, slides, out_dir, key):
    code, _, err = run(capsys, "segment", slides[key], "-o", out_dir)
    check_failure(code, err, 2, "--mpp")
    assert not out_dir.exists()
    # the flag is the fix: the same slide gets past the pixel-size check with --mpp
    code, _, err = run(capsys, "info", slides[key], "--mpp", "0.5")
    assert code == 0, err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc"])
@pytest.mark.parametrize("command", ["segment", "info"])
def test_bad_mpp_value_exit_2(capsys, slides, out_dir, value, command):
    extra = ["-o", out_dir] if command == "segment" else []
    code, _, err = run(capsys, command, slides["good"], *extra, f"--mpp={value}")
    check_failure(code, err, 2, "--mpp")
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--tile-size", "100"), ("--tile-size", "0"), ("--tile-size", "-64"),
     ("--block-size", "100"), ("--block-size", "0"), ("--block-size", "-2048"),
     ("--batch-size", "0"), ("--num-workers", "0")],
)
def test_bad_sizes_name_the_flag(capsys, slides, out_dir, flag, value):
    code, out, err = run(capsys, "segment", slides["good"], "-o", out_dir, f"{flag}={value}")
    check_failure(code, err, 2, flag)
    assert out == ""
    assert not out_dir.exists()


@pytest.mark.parametrize("value", ["wavy", "Smooth", ""])
def test_bad_outlines_value_exit_2(capsys, slides, out_dir, value):
    """A typed ConfigError (exit 2, one line naming the flag and the modes), raised before any work."""
    code, out, err = run(capsys, "segment", slides["good"], "-o", out_dir, f"--outlines={value}")
    check_failure(code, err, 2, "--outlines")
    assert "pixel, smooth" in err
    assert out == ""
    assert not out_dir.exists()


def test_non_integer_tile_size_is_usage_error(capsys, slides, out_dir):
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--tile-size", "big")
    check_failure(code, err, 2, "--tile-size")
    assert not out_dir.exists()


def test_no_tissue_exit_2(capsys, slides, out_dir, existing_out):
    for target in (out_dir, existing_out):
        before = snapshot(target)
        code, _, err = run(capsys, "segment", slides["white"], "-o", target)
        check_failure(code, err, 2, "no tissue")
        assert snapshot(target) == before


# --------------------------------------------------------------------------------------------- output


def test_output_under_a_regular_file_exit_2(capsys, slides, tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("I am a file\n")
    code, _, err = run(capsys, "segment", slides["good"], "-o", blocker / "out")
    check_failure(code, err, 2, "-o")
    assert blocker.read_text() == "I am a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile"]


def test_output_is_a_regular_file_exit_2(capsys, slides, tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("I am a file\n")
    code, _, err = run(capsys, "segment", slides["good"], "-o", blocker)
    check_failure(code, err, 2, "-o")
    assert blocker.read_text() == "I am a file\n"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir_exit_2(capsys, slides, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run(capsys, "segment", slides["good"], "-o", ro)
        check_failure(code, err, 2, "-o")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_failure_removes_created_parent_folders(capsys, slides, tmp_path):
    """-o a/b/out where none exists: a failure inside the run leaves no a/ behind."""
    code, _, err = run(capsys, "segment", slides["good"], "-o", tmp_path / "a" / "b" / "out", "--device", "cuda:99")
    assert code == 2, err
    assert "Traceback" not in err
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wsi_weakseg.model.card import ModelCard, save_model
    from wsi_weakseg.model.resnet_unet import ResNet34UNet

    folder = tmp_path_factory.mktemp("models") / "tiny"
    card = ModelCard(name="tiny", architecture="resnet34-unet", mpp=MPP, arch_kwargs={"width": 4},
                     tile_size=256, context_px=32, trained=False)
    save_model(folder, card, ResNet34UNet(width=4, out_channels=2))
    return folder


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tiny_model_loads(tiny_model):
    from wsi_weakseg.model.card import load_model

    assert load_model(tiny_model).card.name == "tiny"


def test_model_folder_without_card(capsys, slides, tmp_path, out_dir):
    folder = tmp_path / "nocard"
    folder.mkdir()
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--model", folder)
    check_failure(code, err, 2, "card.json")
    assert not out_dir.exists()


def test_model_card_invalid_json(capsys, slides, tiny_model, tmp_path, out_dir):
    folder = _copy_model(tiny_model, tmp_path / "m")
    (folder / "card.json").write_text('{"name": "tiny", ')
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--model", folder)
    check_failure(code, err, 2, "card")
    assert not out_dir.exists()


def test_model_card_unknown_key(capsys, slides, tiny_model, tmp_path, out_dir):
    folder = _copy_model(tiny_model, tmp_path / "m")
    data = json.loads((folder / "card.json").read_text())
    data["colour_space"] = "rgb"
    (folder / "card.json").write_text(json.dumps(data))
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--model", folder)
    check_failure(code, err, 2, "colour_space", "known keys")
    assert not out_dir.exists()


def test_model_card_bad_value(capsys, slides, tiny_model, tmp_path, out_dir):
    folder = _copy_model(tiny_model, tmp_path / "m")
    data = json.loads((folder / "card.json").read_text())
    data["tile_size"] = "large"
    (folder / "card.json").write_text(json.dumps(data))
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--model", folder)
    check_failure(code, err, 2, "card")
    assert not out_dir.exists()


def test_model_weights_sha256_mismatch(capsys, slides, tiny_model, tmp_path, existing_out):
    folder = _copy_model(tiny_model, tmp_path / "m")
    weights = folder / "weights.pt"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    before = snapshot(existing_out)
    code, _, err = run(capsys, "segment", slides["good"], "-o", existing_out, "--model", folder)
    check_failure(code, err, 2, "sha256", "corrupt")
    assert snapshot(existing_out) == before


def test_model_weights_missing(capsys, slides, tiny_model, tmp_path, out_dir):
    folder = _copy_model(tiny_model, tmp_path / "m")
    (folder / "weights.pt").unlink()
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--model", folder)
    check_failure(code, err, 2, "missing")
    assert not out_dir.exists()


@pytest.mark.parametrize("name", ["../weights.pt", "/tmp/weights.pt"])
def test_model_weights_outside_the_folder_refused_before_reading(capsys, monkeypatch, slides, tiny_model, tmp_path,
                                                                 existing_out, name):
    import wsi_weakseg.model.card as card_module

    folder = _copy_model(tiny_model, tmp_path / "m")
    (tmp_path / "weights.pt").write_bytes((folder / "weights.pt").read_bytes())  # what "../weights.pt" names
    data = json.loads((folder / "card.json").read_text())
    data["weights"] = name
    (folder / "card.json").write_text(json.dumps(data))
    monkeypatch.setattr(card_module, "file_sha256", _boom(AssertionError("weights were read")))
    monkeypatch.setattr(card_module.torch, "load", _boom(AssertionError("weights were loaded")))
    before = snapshot(existing_out)
    code, out, err = run(capsys, "segment", slides["good"], "-o", existing_out, "--model", folder)
    check_failure(code, err, 2, "weights", "bare name of a file in the model folder")
    assert out == "" and snapshot(existing_out) == before


def test_unknown_model_name(capsys, slides, out_dir):
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--model", "no-such-model")
    check_failure(code, err, 2, "hematoxylin-baseline")
    assert not out_dir.exists()


# --------------------------------------------------------------------------------------------- ROI, device


def _roi_file(path: Path, ring: list[list[float]]) -> Path:
    fc = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": "3f2a9c1e-0000-4000-8000-000000000001",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation"},
    }]}
    path.write_text(json.dumps(fc))
    return path


def test_roi_invalid_json(capsys, slides, tmp_path, out_dir):
    roi = tmp_path / "roi.geojson"
    roi.write_text('{"type": "FeatureCollection", "features": [')
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--roi", roi)
    check_failure(code, err, 2, "roi.geojson", "json")
    assert not out_dir.exists()


def test_roi_missing_file(capsys, slides, tmp_path, out_dir):
    roi = tmp_path / "nope.geojson"
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--roi", roi)
    check_failure(code, err, 2, "nope.geojson")
    assert not out_dir.exists()


@pytest.mark.parametrize("suffix", [".geojson.gz", ".zip"])
def test_roi_over_the_size_cap_exit_2(capsys, monkeypatch, slides, tmp_path, out_dir, suffix):
    import gzip
    import zipfile

    import wsi_weakseg.io._geojson_read as geojson_read

    monkeypatch.setattr(geojson_read, "MAX_GEOJSON_BYTES", 2048)  # the real cap is 512 MiB
    text = _roi_file(tmp_path / "roi.geojson", [[0, 0], [200, 0], [200, 200], [0, 200], [0, 0]]).read_bytes()
    text = text[:-2] + b" " * 4096 + text[-2:]  # still valid JSON, now over the cap once decompressed
    roi = tmp_path / f"big{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(roi, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("roi.geojson", text)
    else:
        roi.write_bytes(gzip.compress(text))
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--roi", roi)
    check_failure(code, err, 2, roi.name, "MiB")
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "ring",
    [
        [[5000, 5000], [6000, 5000], [6000, 6000], [5000, 6000], [5000, 5000]],  # outside the slide
        [[0, 0], [24, 0], [24, 24], [0, 24], [0, 0]],  # inside the slide, on glass in a corner
    ],
    ids=["outside-slide", "glass-corner"],
)
def test_roi_without_tissue_exit_2(capsys, slides, tmp_path, out_dir, existing_out, ring):
    roi = _roi_file(tmp_path / "roi.geojson", ring)
    for target in (out_dir, existing_out):
        before = snapshot(target)
        code, _, err = run(capsys, "segment", slides["good"], "-o", target, "--roi", roi)
        check_failure(code, err, 2, "no tissue", "roi")
        assert snapshot(target) == before


def test_tissue_file_missing_or_empty_exit_2(capsys, slides, tmp_path, out_dir, existing_out):
    empty = tmp_path / "no-polygons.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    for target in (out_dir, existing_out):
        for arg, fragment in ((tmp_path / "nope.geojson", "no such geojson file"), (empty, "--tissue")):
            before = snapshot(target)
            code, _, err = run(capsys, "segment", slides["good"], "-o", target, "--tissue", arg)
            check_failure(code, err, 2, fragment)
            assert snapshot(target) == before


def test_outputs_of_another_slide_with_the_same_stem_exit_2(capsys, slides, tmp_path):
    """``a.svs`` and ``a.ndpi`` share output names: the second is refused, the first's outputs stay."""
    from PIL import Image

    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", slides["good"], "-o", out, "--no-progress")
    assert code == 0, err
    other = tmp_path / "elsewhere" / "good.png"
    other.parent.mkdir()
    rgb, _ = synthetic_he(size=(256, 256), mpp=MPP, seed=5)
    Image.fromarray(rgb).save(other)
    before = snapshot(out)
    code, _, err = run(capsys, "segment", other, "-o", out, "--mpp", MPP, "--no-progress")
    check_failure(code, err, 2, "already holds the outputs of", "choose another -o")
    assert snapshot(out) == before
    # the same slide again (even moved: same content) is a rerun, not a collision
    moved = tmp_path / "moved" / "good.tiff"
    moved.parent.mkdir()
    moved.write_bytes(slides["good"].read_bytes())
    code, _, err = run(capsys, "segment", moved, "-o", out, "--no-progress")
    assert code == 0, err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_exit_2(capsys, slides, out_dir, existing_out):
    for target in (out_dir, existing_out):
        before = snapshot(target)
        code, _, err = run(capsys, "segment", slides["good"], "-o", target, "--device", "cuda")
        check_failure(code, err, 2, "--device cpu")
        assert snapshot(target) == before


def test_device_unknown_exit_2(capsys, slides, out_dir):
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--device", "tpu")
    check_failure(code, err, 2, "tpu")
    assert not out_dir.exists()


# --------------------------------------------------------------------------------------------- exit code 1


def _boom(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize(
    ("exc", "fragment"),
    [(ProcessingError("the merge went wrong; report this"), "merge went wrong"),
     (RuntimeError("kaboom"), "kaboom"),
     (MemoryError(), "MemoryError")],
    ids=["ProcessingError", "RuntimeError", "MemoryError"],
)
def test_processing_failure_exit_1_and_cleanup(capsys, monkeypatch, slides, out_dir, existing_out, exc, fragment):
    import wsi_weakseg.engine.segment as seg

    monkeypatch.setattr(seg, "write_geojson", _boom(exc))
    for target in (out_dir, existing_out):
        before = snapshot(target)
        code, out, err = run(capsys, "segment", slides["good"], "-o", target, "--num-workers", "1")
        check_failure(code, err, 1, fragment)
        assert out == ""
        assert published(snapshot(target)) == published(before)
        kept_partial(target, "good")  # inference finished: its tiles are kept for a rerun


def test_unexpected_error_traceback_only_with_verbose(capsys, monkeypatch, slides, out_dir):
    import wsi_weakseg.engine.segment as seg

    monkeypatch.setattr(seg, "write_geojson", _boom(RuntimeError("kaboom")))
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir)
    line = check_failure(code, err, 1, "kaboom")
    assert "-v" in line  # says how to get more detail
    code, _, err = run(capsys, "-v", "segment", slides["good"], "-o", out_dir)
    assert code == 1
    assert "Traceback" in err and "kaboom" in err
    assert published(snapshot(out_dir)) is None  # nothing published; finished tiles kept for a rerun
    kept_partial(out_dir, "good")


def test_failure_while_publishing_restores_previous_outputs(capsys, monkeypatch, slides, tmp_path):
    """A failure half-way through moving outputs into place neither leaves new files nor loses old ones."""
    import wsi_weakseg.engine.segment as seg

    target = tmp_path / "out"
    code, _, err = run(capsys, "segment", slides["good"], "-o", target)
    assert code == 0, err
    (target / "keep.txt").write_text("mine\n")
    # make the previous outputs differ from what a rerun writes, so that losing them shows
    (target / "good.geojson").write_text("previous run\n")
    (target / "good.ome.zarr" / "previous.txt").write_text("previous run\n")
    before = snapshot(target)

    real_replace = os.replace
    armed = {"on": True}

    def flaky_replace(src, dst):
        # the last output moved into place is run.json: fail that move once
        if armed["on"] and Path(dst).name == "good.run.json" and Path(dst).parent.name in ("out", "fresh"):
            armed["on"] = False
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(seg.os, "replace", flaky_replace)
    for dest in (target, tmp_path / "fresh"):
        armed["on"] = True
        prev = snapshot(dest)
        code, _, err = run(capsys, "segment", slides["good"], "-o", dest)
        check_failure(code, err, 2, "No space left")
        assert not armed["on"], "the injected failure did not happen"
        assert published(snapshot(dest)) == published(prev)
    assert published(snapshot(target)) == published(before)


def test_keyboard_interrupt_publishes_nothing_and_keeps_finished_tiles(capsys, caplog, monkeypatch, slides, out_dir):
    import wsi_weakseg.engine.segment as seg

    real = seg.write_geojson
    monkeypatch.setattr(seg, "write_geojson", _boom(KeyboardInterrupt()))
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir)
    assert code == 130
    assert "Traceback" not in err and "rerun the same command" in caplog.text
    assert published(snapshot(out_dir)) is None
    n_tiles = len(kept_partial(out_dir, "good").joinpath("tiles.log").read_text().splitlines())
    monkeypatch.setattr(seg, "write_geojson", real)
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir)
    assert code == 0, err
    run_json = json.loads((out_dir / "good.run.json").read_text())
    assert run_json["resumed"]["tiles_reused"] == n_tiles == run_json["tiles"]["processed"]
    assert not any(p.name.startswith(PARTIAL_PREFIX) for p in out_dir.iterdir())


# --------------------------------------------------------------------------------------------- real process


def _subprocess(*argv: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsi_weakseg.cli", *map(str, argv)],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


def test_subprocess_missing_slide(tmp_path):
    p = _subprocess("segment", tmp_path / "missing.svs", "-o", tmp_path / "out", cwd=tmp_path)
    check_failure(p.returncode, p.stderr, 2, "not found")
    assert p.stdout == ""
    assert not (tmp_path / "out").exists()


def test_subprocess_corrupt_slide_and_bad_flag(slides, tmp_path):
    p = _subprocess("segment", slides["corrupt"], "-o", tmp_path / "out", cwd=tmp_path)
    check_failure(p.returncode, p.stderr, 2, "not a slide")
    p = _subprocess("segment", slides["good"], "-o", tmp_path / "out", "--mpp", "-1", cwd=tmp_path)
    check_failure(p.returncode, p.stderr, 2, "--mpp")
    p = _subprocess("segment", slides["good"], "-o", tmp_path / "out", "--tile-size", "100", cwd=tmp_path)
    check_failure(p.returncode, p.stderr, 2, "--tile-size")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_subprocess_no_tissue(slides, tmp_path):
    p = _subprocess("segment", slides["white"], "-o", tmp_path / "out", cwd=tmp_path)
    check_failure(p.returncode, p.stderr, 2, "no tissue")
    assert not (tmp_path / "out").exists()


HOLDER = """
import sys, time
from pathlib import Path
from wsi_weakseg.engine.lock import segment_lock
with segment_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_second_segment_of_one_slide_into_one_folder_exit_2_until_the_holder_dies(capsys, slides, existing_out):
    """Two segment runs never write the same outputs: the second fails at once, naming the holder."""
    before = snapshot(existing_out)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(existing_out), "good"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run(capsys, "segment", slides["good"], "-o", existing_out, "--no-progress")
        check_failure(code, err, 2, "another segment run", f"pid {holder.pid}", "-o")
        assert {k: v for k, v in snapshot(existing_out).items() if k != ".good.lock"} == before
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait(timeout=60)
    code, _, err = run(capsys, "segment", slides["good"], "-o", existing_out, "--no-progress")
    assert code == 0, err
    assert (existing_out / "good.geojson").exists() and not (existing_out / ".good.lock").exists()


@pytest.mark.parametrize("value", ["-1", "65"])
def test_bad_overlay_count_exit_2_and_nothing_written(capsys, slides, out_dir, value):
    code, _, err = run(capsys, "segment", slides["good"], "-o", out_dir, "--overlays", value)
    check_failure(code, err, 2, "--overlays", "0 to 64")
    assert not out_dir.exists()
