"""Progress bars on stderr (tqdm), silent when disabled or when stderr is not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from collections.abc import Iterator

from tqdm import tqdm


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[tqdm]:
    """A tqdm bar writing to stderr; ``update(n)`` is thread-safe."""
    bar = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
