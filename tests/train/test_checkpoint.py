"""Checkpoints hold only tensors and plain Python, so they load with ``weights_only=True``."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from wsi_weakseg.errors import CheckpointError
from wsi_weakseg.train.checkpoint import load_checkpoint, plain, restore_rng, rng_state, save_checkpoint


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    rng = np.random.default_rng(7)
    rng.random(5)
    torch.manual_seed(3)
    random.seed(11)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state(rng), "config": {"seed": np.int64(7)}})
    expected = (rng.random(4), torch.rand(3), [random.random() for _ in range(3)])
    state = torch.load(tmp_path / "c.pt", weights_only=True)  # the whole point: no pickled objects
    assert state["config"] == {"seed": 7} and type(state["config"]["seed"]) is int
    rng2 = np.random.default_rng(0)
    restore_rng(rng2, load_checkpoint(tmp_path / "c.pt")["rng"])
    assert np.array_equal(rng2.random(4), expected[0])
    assert torch.equal(torch.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_plain_converts_numpy_and_refuses_other_objects():
    mt = np.random.Generator(np.random.MT19937(1)).bit_generator.state  # holds a numpy array
    assert isinstance(plain(mt)["state"]["key"], list)
    with pytest.raises(TypeError, match="plain Python"):
        plain({"x": object()})


class _Pickled:
    """Stands for any object an old checkpoint pickled (torch would import and build it to load)."""


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    torch.save({"epoch": 0, "thing": _Pickled()}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="without --resume"):
        load_checkpoint(tmp_path / "old.pt")


def test_truncated_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(1000)})
    blob = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "c.pt")
