"""The interrupted-then-resumed run every recipe's bit-exact resume test compares with an uninterrupted one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from wsi_weakseg.train.loop import run


class _Stop(Exception):
    pass


def straight_and_resumed(cfg, make_recipe: Callable, tmp_path: Path, stop_epoch: int, max_steps: int = 2):
    """Train ``make_recipe(cfg)`` straight through; train another, kill it during ``stop_epoch``'s validation
    (after that epoch's steps, before its checkpoint), resume it into a third. Returns (straight, resumed, history)."""
    straight = make_recipe(cfg)
    run(cfg, straight, tmp_path / "a", max_steps=max_steps)

    def stop_at(recipe, epoch):
        if epoch == stop_epoch:
            raise _Stop
        return {}

    with pytest.raises(_Stop):
        run(cfg, make_recipe(cfg), tmp_path / "b", max_steps=max_steps, validate=stop_at)
    resumed = make_recipe(cfg)
    history = run(cfg, resumed, tmp_path / "b", max_steps=max_steps, resume=True)
    return straight, resumed, history
