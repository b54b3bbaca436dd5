"""The training loop: epochs, sampling, checkpoints and exact resume, independent of the recipe.

A recipe (:class:`Recipe`: the points recipe, the scribbles recipe) names its groups of items (``halves``:
the points recipe's two co-training halves, the scribbles recipe's one group), gives each item's maps and
which of them are class maps, and owns its nets, optimiser and pseudo labels. Every epoch draws, for each
group, a fixed number of augmented patches from a permutation of its items; the only randomness comes from one numpy generator and torch's generator, both
saved in the checkpoint written at the end of every epoch, together with the recipe's state (nets, optimiser,
scheduler, EMA pseudo labels). Resuming therefore continues with exactly the batch the uninterrupted run
would have drawn next.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .augment import AugmentParams, sample_patch
from .checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from .dataset import TrainItem

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class Recipe(Protocol):
    """What the loop needs of a recipe (see :class:`~wsi_weakseg.train.points_recipe.PointsRecipe`)."""

    items: Sequence
    halves: Mapping[str, Sequence[int]]  # groups of item indices; each step draws one batch per group
    nets: Mapping[str, torch.nn.Module]
    seg_nets: tuple[str, ...]  # the segmentation nets (candidates for shipping, kept per epoch)
    nearest: frozenset[str]  # maps resampled by nearest neighbour (class maps)

    def maps(self, index: int) -> dict[str, np.ndarray]: ...  # item maps, pseudo labels included
    def begin_epoch(self, epoch: int) -> None: ...  # pseudo-label refresh, before the epoch's steps
    def step(self, batches: Mapping[str, Mapping[str, np.ndarray]], epoch: int) -> dict[str, float]: ...
    def end_epoch(self) -> None: ...
    def train(self, mode: bool = True) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: Mapping) -> None: ...


def patches_per_epoch(items: Sequence[TrainItem], patch: int) -> int:
    """The paper's tiling: patches of ``patch`` px with 50 % overlap, summed over items (at least 1 each)."""
    n = 0
    for it in items:
        h, w = it.image.shape[:2]
        n += max(1, (h - patch) // (patch // 2) + 1) * max(1, (w - patch) // (patch // 2) + 1)
    return n


def steps_per_epoch(cfg: Mapping, recipe: Recipe, max_steps: int | None = None) -> int:
    """Optimiser steps per epoch: the larger group's patch count over the batch size (capped by ``max_steps``)."""
    per_half = [patches_per_epoch([recipe.items[i] for i in idx], int(cfg["data"]["patch"])) for idx in recipe.halves.values()]
    steps = max(1, -(-max(per_half) // int(cfg["optim"]["batch_size"])))
    return min(steps, max_steps) if max_steps is not None else steps


def _batch(rng: np.random.Generator, recipe: Recipe, indices: Sequence[int], crop: int, aug: AugmentParams) -> dict:
    """Augmented patches of ``indices`` stacked per map; a map some items lack (pseudo labels) is left out."""
    images, maps = [], []
    for i in indices:
        img, t = sample_patch(rng, recipe.items[i].image, recipe.maps(i), crop, aug, nearest=recipe.nearest)
        images.append(img)
        maps.append(t)
    common = set.intersection(*(set(t) for t in maps))
    out = {"image": np.stack(images)}
    for k in sorted(common):
        stacked = np.stack([t[k] for t in maps])
        out[k] = stacked if k in recipe.nearest else stacked.astype(np.float32)
    return out


#: Folder (in the work dir) of every epoch's nets when ``optim.keep_epoch_nets`` is set: ``e<NN>.pt`` =
#: ``{"epoch", "nets": {"a": state_dict, "b": state_dict}}`` (what ``scripts/package_model.py`` reads).
EPOCHS_DIR = "epochs"


def _plain_config(cfg: Mapping) -> dict:
    """The config as JSON types (what a checkpoint stores, and what a resumed run is compared with)."""
    return json.loads(json.dumps(cfg, default=str))


def run(
    cfg: Mapping,
    recipe: Recipe,
    work_dir: Path,
    *,
    resume: bool = False,
    validate: Callable[[Recipe, int], dict] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    max_steps: int | None = None,
    after_epoch: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Train ``recipe`` for ``cfg.optim.epochs`` epochs, checkpointing into ``work_dir`` after each.

    Parameters
    ----------
    cfg : mapping
        Resolved config.
    recipe : Recipe
    work_dir : Path
        Holds ``checkpoint.pt``.
    resume : bool
        Continue from ``work_dir/checkpoint.pt`` (error if absent).
    validate : callable, optional
        ``validate(recipe, epoch) -> metrics`` after each epoch.
    on_step : callable, optional
        ``on_step(global_step, losses)`` after each optimiser step (progress, logging).
    max_steps : int, optional
        Steps per epoch cap (tests, smoke runs).
    after_epoch : callable, optional
        ``after_epoch(history)`` once each epoch's checkpoint is written (training curves).

    Returns
    -------
    list of dict
        Per-epoch history: epoch, mean loss, mean of each loss term (``terms``), validation metrics.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    # Denormal floats appear in late training (tiny gradients/Adam moments) and slow CPU kernels
    # by orders of magnitude; flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
    ckpt = work_dir / CHECKPOINT
    seed = int(cfg["seed"])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    start_epoch, step, history = _resume(cfg, recipe, ckpt, rng) if resume else (0, 0, [])
    n_epochs = int(cfg["optim"]["epochs"])
    steps = steps_per_epoch(cfg, recipe, max_steps)
    for epoch in range(start_epoch, n_epochs):
        record, step = _train_epoch(cfg, recipe, rng, epoch, steps, step, on_step)
        if validate is not None:
            recipe.train(False)
            record["validation"] = validate(recipe, epoch)
        history.append(record)
        _save_epoch(cfg, recipe, work_dir, rng, epoch, step, history)
        log.info("epoch %d/%d: loss %.4f", epoch + 1, n_epochs, record["loss"])
        if after_epoch is not None:
            after_epoch(history)
    recipe.train(False)
    return history


def _resume(cfg: Mapping, recipe: Recipe, ckpt: Path, rng: np.random.Generator) -> tuple[int, int, list[dict]]:
    """Load ``ckpt`` into ``recipe`` and the generators; the first epoch to run, the step count, the history."""
    if not ckpt.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt.parent}; start without --resume")
    state = load_checkpoint(ckpt)
    now = _plain_config(cfg)
    changed = sorted(k for k in set(state["config"]) | set(now)
                     if k != "device" and state["config"].get(k) != now.get(k))
    if changed:
        log.warning("resuming with a config that differs from the checkpoint's in %s: the run will not "
                    "equal an uninterrupted one", changed)
    recipe.load_state_dict(state["recipe"])
    if "rng" in state:
        restore_rng(rng, state["rng"])
    else:  # older checkpoints: the same states under three keys (they load with weights_only too)
        restore_rng(rng, {"numpy": state["numpy_rng"], "torch": state["torch_rng"], "python": state["python_rng"]})
    log.info("resumed after epoch %d (step %d)", state["epoch"], state["step"])
    return state["epoch"] + 1, state["step"], state["history"]


def _train_epoch(cfg: Mapping, recipe: Recipe, rng: np.random.Generator, epoch: int, steps: int, step: int,
                 on_step: Callable[[int, dict], None] | None) -> tuple[dict, int]:
    """One epoch of ``steps`` optimiser steps; its history record (mean loss and terms) and the new step count."""
    aug = AugmentParams.from_config(cfg["augment"])
    crop, bs = int(cfg["data"]["crop"]), int(cfg["optim"]["batch_size"])
    recipe.begin_epoch(epoch)
    recipe.train(True)
    order = {k: np.resize(rng.permutation(idx), steps * bs) for k, idx in recipe.halves.items()}
    losses, terms = [], {}
    for s in range(steps):
        batches = {k: _batch(rng, recipe, order[k][s * bs : (s + 1) * bs], crop, aug) for k in order}
        logs = recipe.step(batches, epoch)
        step += 1
        losses.append(logs["loss"])
        for name, value in logs.items():
            if name != "loss":
                terms.setdefault(name, []).append(value)
        if on_step is not None:
            on_step(step, logs)
    recipe.end_epoch()
    record = {"epoch": epoch, "loss": float(np.mean(losses)), "steps": step,
              "terms": {k: float(np.mean(v)) for k, v in terms.items()}}
    return record, step


def _save_epoch(cfg: Mapping, recipe: Recipe, work_dir: Path, rng: np.random.Generator, epoch: int, step: int,
                history: list[dict]) -> None:
    """The checkpoint after ``epoch`` (and, with ``optim.keep_epoch_nets``, the epoch's segmentation nets)."""
    save_checkpoint(work_dir / CHECKPOINT, {
        "epoch": epoch, "step": step, "history": history, "recipe": recipe.state_dict(),
        "rng": rng_state(rng), "config": _plain_config(cfg),
    })
    if cfg["optim"].get("keep_epoch_nets"):  # for weight averaging / choosing another epoch afterwards
        (work_dir / EPOCHS_DIR).mkdir(exist_ok=True)
        save_checkpoint(work_dir / EPOCHS_DIR / f"e{epoch:02d}.pt",
                        {"epoch": epoch, "nets": {k: recipe.nets[k].state_dict() for k in recipe.seg_nets}})
