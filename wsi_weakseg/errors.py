"""Exception hierarchy of wsi-weakseg.

Every error the package raises on purpose derives from :class:`WsiWeaksegError` and from the builtin
it specialises (``FileNotFoundError``, ``OSError``, ``ValueError``), so callers may catch either.
``exit_code`` is what the CLI returns: 2 for bad input or usage, 1 for a processing failure.
Messages say what to do instead.
"""

from __future__ import annotations


class WsiWeaksegError(Exception):
    """Base class of all wsi-weakseg errors (processing failure, exit code 1)."""

    exit_code = 1


class UserInputError(WsiWeaksegError):
    """Bad input or usage: the user can fix it (exit code 2)."""

    exit_code = 2


class SlideNotFoundError(UserInputError, FileNotFoundError):
    """The slide or image file does not exist."""


class SlideReadError(UserInputError, OSError):
    """The slide exists but cannot be read (empty, corrupt or truncated)."""


class UnsupportedFormatError(SlideReadError):
    """The file is not a slide or image format that wsi-weakseg reads."""


class MissingMppError(UserInputError, ValueError):
    """The slide carries no pixel size and none was given with ``--mpp``."""


class ConfigError(UserInputError, ValueError):
    """An option or configuration value is invalid (e.g. a tile size that is not a multiple of 32)."""


class NoTissueError(UserInputError, ValueError):
    """No tissue was found in the slide (or in the requested region of interest)."""


class ModelCardError(UserInputError, ValueError):
    """A model folder is missing, its card is malformed, or its weights do not match the card."""


class CheckpointError(UserInputError, ValueError):
    """A training checkpoint cannot be loaded safely (unreadable, or pickled objects beyond tensors)."""


class GeoJSONError(UserInputError, ValueError):
    """A GeoJSON file is malformed or holds unusable geometry (e.g. NaN coordinates)."""


class CohortInputError(UserInputError, ValueError):
    """A cohort's input (folder or manifest CSV) is unusable, or two slides would share an output folder."""


class OutputError(UserInputError, OSError):
    """The output location cannot be created or written."""


class ProcessingError(WsiWeaksegError, RuntimeError):
    """Processing failed after the inputs were validated."""
