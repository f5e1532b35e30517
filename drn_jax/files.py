"""Atomic file writes: a crash never leaves a half-written file under the final name.

Every file drn-jax writes outside orbax (JSON logs and summaries, model cards, parameters,
images, CSV tables) goes through `write_atomic`: the bytes go to ``<name>.partial`` beside the
target, which is then renamed over it (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

__all__ = ["jsonable", "to_json", "write_atomic", "write_json"]

PARTIAL_SUFFIX = ".partial"


def write_atomic(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None]) -> pathlib.Path:
    """Writes `data` to `path` through ``<path>.partial`` and a rename; returns the path.

    Args:
      path: the target file; its parent folders are created.
      data: bytes, text (written as UTF-8), or a function that writes into the open binary
        file (e.g. ``lambda f: image.save(f, format="PNG")``).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with open(partial, "wb") as file:
            if callable(data):
                data(file)
            else:
                file.write(data.encode() if isinstance(data, str) else data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def jsonable(value: Any) -> Any:
    """``json.dumps``'s ``default=``: NumPy scalars and arrays as numbers and lists, else `str`."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def to_json(payload: Any, *, indent: int | None = 2) -> str:
    """`payload` as JSON with sorted keys (NumPy values converted), newline-terminated if indented."""
    text = json.dumps(payload, indent=indent, sort_keys=indent is not None, default=jsonable)
    return text + "\n" if indent is not None else text


def write_json(path: str | os.PathLike, payload: Any) -> pathlib.Path:
    """Writes `payload` as indented, key-sorted JSON, atomically."""
    return write_atomic(path, to_json(payload))
