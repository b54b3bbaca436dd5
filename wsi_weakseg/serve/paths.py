"""Root confinement: slides are named by paths relative to a root, and nothing outside the roots is read.

A name is refused (:class:`PathOutsideRootsError`, HTTP 403) when it is not a plain relative path: absolute,
with a ``..`` or empty component, a backslash, a NUL, or a percent-encoded form that decodes to any of those
(``%2e%2e%2f``, applied repeatedly, so double encoding does not help). A name that passes is joined to each
root in order and resolved with every symlink followed; the result must still lie inside that root, so a
symlink that leaves a root is refused like ``..``. The first root holding the file wins.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote

from ..cohort.inputs import DEFAULT_PATTERNS
from ..errors import SlideNotFoundError, UserInputError

log = logging.getLogger(__name__)

#: Longest slide name accepted (bytes of UTF-8); longer names are refused before touching the file system.
MAX_NAME = 1024


class PathOutsideRootsError(UserInputError, PermissionError):
    """A slide name that is not a plain path under a served root (HTTP 403)."""


def _decoded_forms(name: str) -> Iterator[str]:
    """``name`` and every form repeated percent-decoding gives (at most 4 rounds)."""
    yield name
    for _ in range(4):
        decoded = unquote(name)
        if decoded == name:
            return
        name = decoded
        yield name


def check_name(name: object) -> str:
    """Return ``name`` when it is a plain relative path; raise :class:`PathOutsideRootsError` otherwise."""
    if not isinstance(name, str) or not name:
        raise PathOutsideRootsError("'slide' must be a non-empty path relative to a served root, e.g. 'case1/slide.svs'")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise PathOutsideRootsError(f"slide names are at most {MAX_NAME} bytes; use a shorter path")
    for form in _decoded_forms(name):
        parts = form.split("/")
        if (form.startswith("/") or "\\" in form or "\x00" in form or ":" in parts[0]
                or any(p in ("", ".", "..") for p in parts)):
            raise PathOutsideRootsError(
                f"slide {name!r} is not a plain path under a served root (no '..', '.', empty parts, absolute "
                "paths, backslashes or encoded forms of them); name it relative to a root as GET /v1/slides lists it"
            )
    return name


class Roots:
    """The folders a server may read slides from.

    Parameters
    ----------
    roots : sequence of path
        Existing folders; each is resolved once (symlinks in the root itself are followed at start).
    """

    def __init__(self, roots: Sequence[str | os.PathLike]) -> None:
        if not roots:
            raise UserInputError("give at least one --root folder of slides")
        resolved = []
        for r in roots:
            p = Path(r).expanduser().resolve()
            if not p.is_dir():
                raise UserInputError(f"--root {r} is not a folder; give a folder that holds slides")
            resolved.append(p)
        self.paths: list[Path] = resolved

    def resolve(self, name: object) -> Path:
        """The file a slide name refers to, inside a root.

        Raises
        ------
        PathOutsideRootsError
            The name is not a plain relative path, or it resolves (through symlinks) outside its root.
        SlideNotFoundError
            No root holds a file of that name.
        """
        rel = check_name(name)
        outside = False
        for root in self.paths:
            candidate = (root / rel).resolve()
            if not candidate.is_relative_to(root):
                outside = True
                continue
            if candidate.is_file():
                return candidate
        if outside:
            raise PathOutsideRootsError(f"slide {rel!r} resolves outside the served roots (a symlink that leaves a root)")
        raise SlideNotFoundError(f"no served root holds a slide {rel!r}; GET /v1/slides lists the slides")

    def list(self, patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[tuple[str, Path]]:
        """``(name, file)`` of every slide under the roots (first root wins a name), sorted by name.

        Symlinks are followed only when they stay inside their root; hidden files and folders are skipped.
        """
        seen: dict[str, Path] = {}
        for root in self.paths:
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for f in filenames:
                    if f.startswith(".") or not any(Path(f.lower()).match(p) for p in patterns):
                        continue
                    full = Path(dirpath) / f
                    rel = full.relative_to(root).as_posix()
                    if rel in seen or not full.resolve().is_relative_to(root) or not full.resolve().is_file():
                        continue
                    seen[rel] = full.resolve()
        return sorted(seen.items())
