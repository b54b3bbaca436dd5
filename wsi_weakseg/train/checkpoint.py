"""Training checkpoints that load with ``torch.load(weights_only=True)``: tensors and plain Python only.

A checkpoint written by :func:`save_checkpoint` holds nothing but tensors, dicts, lists, tuples, str, int,
float, bool and None: numpy scalars and arrays are turned into Python numbers and lists first, and the
random-generator states are stored in that form (:func:`rng_state` / :func:`restore_rng`). Loading therefore
never executes pickled code; a file that needs more (an older wsi-weakseg's pickled objects, or a
tampered file) is refused by :func:`load_checkpoint` with :class:`~wsi_weakseg.errors.CheckpointError`.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays replaced by Python numbers/lists, recursively (tensors kept).

    Examples
    --------
    >>> plain({"a": np.int64(3), "b": (np.float32(0.5), np.arange(2))})
    {'a': 3, 'b': (0.5, [0, 1])}
    """
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint; convert it to plain Python first")


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Numpy generator, torch CPU generator and Python ``random`` states, as tensors and plain Python."""
    version, internal, gauss = random.getstate()
    return {
        "numpy": plain(rng.bit_generator.state),
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
    }


def restore_rng(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Put the generators back in the states :func:`rng_state` recorded."""
    rng.bit_generator.state = dict(state["numpy"])
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` (made :func:`plain`) atomically to ``path`` (temporary name, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(plain(state), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, without unpickling arbitrary objects.

    Raises
    ------
    CheckpointError
        The file is unreadable, or it holds pickled objects beyond tensors and plain Python (written by
        an older wsi-weakseg, or not by wsi-weakseg at all).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: holds pickled objects that are not loaded for safety (written by an older wsi-weakseg, "
            f"or not by wsi-weakseg); write it again with this version (a training run: train again without "
            f"--resume) ({str(exc).splitlines()[0]})"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint (corrupt or truncated?): {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a wsi-weakseg checkpoint (top level is {type(state).__name__})")
    return state
