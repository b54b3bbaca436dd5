"""The models a request may name: the packaged ones and those trained by the server's train jobs.

Trained models live in ``STATE/models/<name>/`` (a model folder ``segment --model`` loads); they are found
again at start. A new model's name must be a bare safe name (:data:`NAME`) that neither a packaged model,
a trained one nor a queued or running train job already uses (:meth:`ModelRegistry.claim`).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from ..errors import ModelCardError, UserInputError

log = logging.getLogger(__name__)

#: A model name a train request may give: letters, digits, ``.``, ``_``, ``-``; starting with a letter or digit.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelNameError(UserInputError, ValueError):
    """A model name that is not a bare safe name (HTTP 400)."""


class ModelNameTakenError(UserInputError):
    """A model name already used by a packaged or trained model, or by a pending train job (HTTP 409)."""


def check_model_name(name: object) -> str:
    """``name`` when it is a bare safe model name, else :class:`ModelNameError`."""
    if not isinstance(name, str) or not NAME.match(name) or ".." in name:
        raise ModelNameError(f"'name' must be 1-64 letters, digits, '.', '_' or '-' starting with a letter or "
                             f"digit (no '..'), e.g. 'my-model'; got {name!r}")
    return name


class ModelRegistry:
    """Packaged models by name, trained models by name (folders under ``trained_dir``); thread-safe.

    Parameters
    ----------
    default : str
        The model used when a request names none.
    trained_dir : path, optional
        ``STATE/models``: every ``<name>/card.json`` there is served as ``name``.
    """

    def __init__(self, default: str, trained_dir: Path | None = None) -> None:
        from ..model.card import CARD_NAME, available_models

        self.default = default
        self.names = list(available_models())
        self.trained_dir = trained_dir
        self._trained: dict[str, Path] = {}
        self._pending: set[str] = set()
        self._sha: dict[str, str] = {}
        self._lock = threading.Lock()
        if trained_dir is not None:
            trained_dir.mkdir(parents=True, exist_ok=True)
            for card in sorted(trained_dir.glob(f"*/{CARD_NAME}")):
                name = card.parent.name
                if NAME.match(name) and name not in self.names:
                    self._trained[name] = card.parent
            log.info("%d trained model(s) in %s", len(self._trained), trained_dir)

    def served(self) -> list[str]:
        """Every name a request may give: packaged, then trained."""
        with self._lock:
            return self.names + sorted(self._trained)

    def ref(self, name: object) -> tuple[str, str]:
        """``(ref, sha256)`` for a cohort task; :class:`ModelCardError` for a name that is not served."""
        from ..model.card import load_model

        with self._lock:
            folder = self._trained.get(name) if isinstance(name, str) else None
            known = isinstance(name, str) and (name in self.names or folder is not None)
        if not known:
            raise ModelCardError(f"unknown model {name!r}; GET /v1/models lists the served ones: {', '.join(self.served())}")
        ref = str(folder) if folder is not None else str(name)
        if ref not in self._sha:
            self._sha[ref] = load_model(ref).sha256
        return ref, self._sha[ref]

    def claim(self, name: object) -> str:
        """Reserve ``name`` for a new train job (400 when not a safe name, 409 when taken)."""
        name = check_model_name(name)
        with self._lock:
            if name in self.names or name in self._trained or name in self._pending:
                what = ("a packaged model" if name in self.names else "a trained model" if name in self._trained
                        else "a queued or running train job")
                raise ModelNameTakenError(f"model name {name!r} is already used by {what}; choose another name")
            self._pending.add(name)
        return name

    def release(self, name: str) -> None:
        """Forget a claim whose train job ended without a model."""
        with self._lock:
            self._pending.discard(name)

    def add_trained(self, name: str, folder: Path) -> None:
        """Serve the finished model ``folder`` as ``name`` (its claim ends)."""
        with self._lock:
            self._pending.discard(name)
            self._trained[name] = folder
        log.info("model %r trained and served", name)

    def describe(self) -> list[dict[str, Any]]:
        """``GET /v1/models``'s entries (no server paths)."""
        from ..model.card import load_model

        with self._lock:
            entries = [(n, n, "packaged") for n in self.names] + [(n, str(p), "trained") for n, p in sorted(self._trained.items())]
        out = []
        for name, ref, source in entries:
            card = load_model(ref).card
            out.append({"name": name, "default": name == self.default, "source": source,
                        "architecture": card.architecture, "mpp": card.mpp, "trained": card.trained,
                        "description": card.description, "license": card.license})
            if source == "trained":
                out[-1]["metrics"] = (card.metrics or {}).get("mean")
        return out
