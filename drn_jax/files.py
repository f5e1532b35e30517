"""Atomic file writes: a crash never leaves a half-written file under the final name.

Every file drn-jax writes outside orbax (JSON logs and summaries, model cards, parameters,
images, CSV tables) goes through `write_atomic`: the bytes go to ``<name>.partial`` beside the
target, which is then renamed over it (``os.replace`` is atomic on POSIX and Windows). A folder
that must appear whole or not at all (an exported model) is built by `atomic_directory` in a
hidden folder beside the target and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

__all__ = ["atomic_directory", "jsonable", "to_json", "write_atomic", "write_json"]

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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace_if: Callable[[pathlib.Path], bool] | None = None
                     ) -> Iterator[pathlib.Path]:
    """Yields a new empty folder beside `path` to fill; on success it becomes `path`, whole.

    The folder is ``.<name>.partial-XXXX`` in `path`'s parent (so the final rename stays on one
    file system, where it is atomic); any exception removes it and leaves `path` as it was.
    `path` may be missing or an empty folder. A non-empty `path` is replaced only when
    ``replace_if(path)`` says it may be (e.g. it holds an earlier export), else ``FileExistsError``
    is raised before anything is written.

    Raises:
      OSError: the parent cannot be created or written (the message names the path).
      FileExistsError: `path` is a file, or a non-empty folder that `replace_if` refuses.
    """
    path = pathlib.Path(path)
    replace = False
    if path.is_dir() and any(path.iterdir()):
        if replace_if is None or not replace_if(path):
            raise FileExistsError(f"{path}: exists and is not empty; give a new folder or remove it")
        replace = True
    elif path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL_SUFFIX}-", dir=path.parent))
    try:
        yield staging
        if replace:
            # Two renames: the old folder is out of the way for an instant only, never half-deleted.
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old)
            try:
                os.replace(staging, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)  # onto a missing or empty folder: atomic on POSIX
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
