"""The overlapped instance stage: a block starts exactly when the last tile under its window is reported, and
the results never depend on when or in which order tiles arrive."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_weakseg.engine import schedule
from wsi_weakseg.engine.instances import InstanceParams
from wsi_weakseg.engine.merge import Window, block_grid, iter_nuclei
from wsi_weakseg.engine.records import load_block
from wsi_weakseg.engine.schedule import InstanceStage, tiles_under
from wsi_weakseg.errors import ProcessingError

PARAMS = InstanceParams(foreground=128, centre=60, peak_radius=2, max_cost=6.0, path_weight=1.0, min_area=5)
TILE, BLOCK = 64, 64


def _maps(shape=(200, 264), n=60, seed=0) -> np.ndarray:
    """Foreground and centre maps of ``n`` Gaussian nuclei (uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    centre = np.zeros(shape)
    for cy, cx, s in zip(rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n), rng.uniform(2, 4, n)):
        centre = np.maximum(centre, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2)))
    fg = (centre > 0.2) * 255
    return np.stack([fg, centre * 255]).astype(np.uint8)


def _tiles(shape) -> list[tuple[int, int]]:
    return [(y, x) for y in range(0, shape[0], TILE) for x in range(0, shape[1], TILE)]


def _outputs(stage: InstanceStage):
    stage.wait()
    records = [load_block(stage.work / "blocks", b) for b in stage.blocks]
    return stage.keys[:], [(r.keys.tolist(), r.xy.tolist()) for r in records]


def test_tiles_under_by_hand():
    w = Window.of((200, 264), 1, 2, 64, 22)  # core rows 64..128, cols 128..192; window rows 42..150, cols 106..214
    assert (w.wy0, w.wy1, w.wx0, w.wx1) == (42, 150, 106, 214)
    every = set(_tiles((200, 264)))
    assert tiles_under(w, 64, every) == [(y, x) for y in (0, 64, 128) for x in (64, 128, 192)]
    assert tiles_under(w, 64, {(0, 64), (192, 0)}) == [(0, 64)]


def test_blocks_start_when_their_last_tile_arrives_and_match_a_sequential_run(tmp_path):
    maps = _maps()
    shape = maps.shape[1:]
    with InstanceStage(maps, tmp_path / "seq", PARAMS, BLOCK) as seq:
        expected = _outputs(seq)
    tiles = _tiles(shape)
    windows = {b: Window.of(shape, *b, BLOCK, PARAMS.halo) for b in block_grid(shape, BLOCK)}
    with InstanceStage(maps, tmp_path / "ovl", PARAMS, BLOCK, 2, waiting=tiles, tile=TILE) as stage:
        assert stage.started == 0
        for k, t in enumerate(tiles):
            stage.tiles_done([t])
            done = set(tiles[: k + 1])
            # by hand: a block can start once every tile whose core meets its window is done
            ready = sum(all((y, x) in done for y in range(0, shape[0], TILE) for x in range(0, shape[1], TILE)
                            if y < w.wy1 and y + TILE > w.wy0 and x < w.wx1 and x + TILE > w.wx0)
                        for w in windows.values())
            assert stage.started == ready
            if k == len(tiles) // 2:
                assert 0 < stage.started < len(windows)  # post-processing runs while tiles still arrive
        got = _outputs(stage)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1]
    assert len(list(iter_nuclei(tmp_path / "ovl" / "blocks", stage.blocks))) >= 30


def test_tile_order_does_not_matter(tmp_path):
    maps = _maps(seed=1)
    tiles = _tiles(maps.shape[1:])
    outs = []
    for k, order in enumerate([tiles, tiles[::-1], [tiles[i] for i in np.random.default_rng(0).permutation(len(tiles))]]):
        with InstanceStage(maps, tmp_path / str(k), PARAMS, BLOCK, 2, waiting=tiles, tile=TILE) as stage:
            for i in range(0, len(order), 3):
                stage.tiles_done(order[i : i + 3])
            outs.append(_outputs(stage))
    for keys, records in outs[1:]:
        np.testing.assert_array_equal(keys, outs[0][0])
        assert records == outs[0][1]


def test_a_failing_block_is_raised_and_missing_tiles_are_an_error(tmp_path, monkeypatch):
    maps = _maps()
    tiles = _tiles(maps.shape[1:])
    real = schedule.process_block

    last = block_grid(maps.shape[1:], BLOCK)[-1]  # the only block waiting for the last tile

    def fail_one(maps, keys, by, bx, *a, **k):
        if (by, bx) == last:
            raise RuntimeError("the last block failed")
        return real(maps, keys, by, bx, *a, **k)

    monkeypatch.setattr(schedule, "process_block", fail_one)
    with InstanceStage(maps, tmp_path / "f", PARAMS, BLOCK, waiting=tiles, tile=TILE) as stage:
        stage.tiles_done(tiles[:-1])
        with pytest.raises(ProcessingError, match="still wait for tiles"):
            stage.wait()
        with pytest.raises(RuntimeError, match="the last block failed"):
            stage.tiles_done(tiles[-1:])
            stage.wait()


def test_ids_through_block_key_tables_equal_the_whole_image_labels(tmp_path):
    from wsi_weakseg.engine.instances import label_image
    from wsi_weakseg.engine.merge import write_label_ids

    maps = _maps(seed=2)
    ids = np.zeros(maps.shape[1:], np.uint32)
    with InstanceStage(maps, tmp_path / "s", PARAMS, BLOCK, 2) as stage:
        inst = stage.finish(ids)
        np.testing.assert_array_equal(ids, label_image(maps, PARAMS))
        assert ids.max() == len(inst.sorted_keys) >= 30
        # a nucleus no block emitted, though its label is in a chunk: the merge lost locality, said loudly
        with pytest.raises(ProcessingError, match="blocks disagreed"):
            write_label_ids(stage.keys, np.zeros_like(ids), inst.sorted_keys[1:], tmp_path / "s" / "blocks", BLOCK)
