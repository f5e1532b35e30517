"""The errors users see. Each one's `str()` is one line: what is wrong, and what to do.

Entry points turn them into ``error: <line>`` with :func:`drn_jax.cli.user_errors`; the library
only raises them. `one_line` flattens any exception's text the same way everywhere.
"""

from __future__ import annotations

import os

__all__ = ["ConfigError", "ImageReadError", "MissingDependencyError", "NonFiniteLossError", "RunError",
           "SourceError", "USER_ERRORS", "one_line"]


def one_line(err: BaseException, limit: int | None = None) -> str:
    """`err`'s message as one line: its first line with text, whitespace collapsed and without a
    closing period (it is quoted inside other messages), cut to `limit` characters; its type
    name when it has no text. Later lines (TensorFlow's op traces, orbax's details) are left out."""
    lines = [" ".join(line.split()) for line in str(err).splitlines()]
    text = next((line for line in lines if line), "").rstrip(".") or type(err).__name__
    return text[:limit] if limit else text


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the fix."""


class SourceError(ValueError):
    """A data source that cannot be used; the message names it and the fix."""


class ImageReadError(ValueError):
    """An image file that cannot be used: ``<path>: <what happened>; <what to do>``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingDependencyError(ImportError):
    """An optional package a command needs is not installed; the message names the pip extra."""


class RunError(RuntimeError):
    """A run stopped by something it cannot fix itself (exit status 1, not 2)."""


class NonFiniteLossError(RunError):
    """A loss term or the gradient norm became NaN or inf; no state after it is saved."""


# What a user can fix: bad flags and configs, unusable files, missing or unwritable paths.
USER_ERRORS = (ConfigError, SourceError, ImageReadError, MissingDependencyError, OSError, ValueError)
