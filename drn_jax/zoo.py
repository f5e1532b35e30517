"""The pretrained-model folder: which models it holds, and reading and writing their files.

A pretrained model ``NAME`` is three files in the folder (by default ``drn_jax/pretrained/``
inside the package, shipped as package data):

* ``NAME.msgpack``: the parameters, ``flax.serialization.msgpack_serialize`` of the params
  tree (the EMA parameters when the run kept an EMA);
* ``NAME.json``: ``{"name", "format", "config", "parameters", "params_sha256", "card"}``;
  ``config`` is the training run's config (``scale`` and ``model.*`` rebuild the network, the
  rest documents the run), ``card`` the model card's data (`drn_jax.pretrained`);
* ``NAME.md``: the model card as Markdown.

Set ``DRN_PRETRAINED_DIR`` (or pass ``path=``) to use another folder, e.g. in tests, which must
never write into the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from drn_jax import config as config_lib
from drn_jax import model_factory
from drn_jax.errors import one_line
from drn_jax.files import to_json, write_atomic

__all__ = ["DIRECTORY_ENV", "FORMAT", "PACKAGE_DIRECTORY", "available", "directory", "load_metadata",
           "read", "write"]

DIRECTORY_ENV = "DRN_PRETRAINED_DIR"
PACKAGE_DIRECTORY = pathlib.Path(__file__).resolve().parent / "pretrained"
FORMAT = 1


def directory(path: str | os.PathLike | None = None) -> pathlib.Path:
    """The pretrained folder: ``path``, else ``$DRN_PRETRAINED_DIR``, else the package's."""
    if path is not None:
        return pathlib.Path(path).expanduser()
    env = os.environ.get(DIRECTORY_ENV, "").strip()
    return pathlib.Path(env).expanduser() if env else PACKAGE_DIRECTORY


def available(path: str | os.PathLike | None = None) -> list[str]:
    """Names of the complete models (``.msgpack`` and ``.json``) in the folder, sorted."""
    folder = directory(path)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.msgpack") if p.with_suffix(".json").is_file())


def load_metadata(name: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``NAME.json`` of a pretrained model (config, parameter count, hash, model card)."""
    folder = directory(path)
    if name not in available(folder):
        names = available(folder)
        raise FileNotFoundError(f"no pretrained model {name!r} in {folder}; "
                                f"available: {', '.join(names) if names else 'none'}")
    meta_path = folder / f"{name}.json"
    try:
        return json.loads(meta_path.read_text())
    except ValueError as err:
        raise ValueError(f"{meta_path}: not JSON ({err})") from None


def read(name: str, path: str | os.PathLike | None = None) -> tuple[dict[str, Any], Any]:
    """``(metadata, params)`` of the pretrained model `name`; params as device arrays.

    Raises ``FileNotFoundError`` naming the available models when `name` is unknown, and
    ``ValueError`` when the files do not match (corrupted, or from another model).
    """
    folder = directory(path)
    meta = load_metadata(name, folder)
    params_path = folder / f"{name}.msgpack"
    data = params_path.read_bytes()
    expected_hash = meta.get("params_sha256")
    if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"{params_path}: its sha256 differs from {name}.json's; the file is "
                         "corrupted or from another export; export it again")
    try:
        params = flax.serialization.msgpack_restore(data)
    except Exception as err:  # noqa: BLE001 - msgpack raises several types
        raise ValueError(f"{params_path}: cannot be read ({one_line(err, 200)})") from None
    model = model_factory.create_model(config_lib.from_saved(meta["config"]))
    expected = model_factory.abstract_params(model)
    want, got = _leaf_shapes(expected), _leaf_shapes(params)
    if want != got:
        differing = sorted(set(want.items()) ^ set(got.items()))[:1]
        raise ValueError(f"{params_path}: its parameters do not fit the model of {name}.json "
                         f"(first difference: {differing[0][0] if differing else '?'}); export it again")
    # The saved tree holds NumPy arrays; arrays on the device keep them bit for bit.
    return meta, jax.tree.map(jnp.asarray, params)


def _leaf_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    return {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def write(name: str, params: Any, metadata: Mapping[str, Any], path: str | os.PathLike | None = None
          ) -> pathlib.Path:
    """Writes ``NAME.msgpack`` and ``NAME.json`` (adding name, format, hash); returns the msgpack's path."""
    if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise ValueError(f"--name={name!r}: use letters, digits, '.', '_' and '-'")
    data = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, jax.device_get(params)))
    folder = directory(path)
    meta = {**metadata, "name": name, "format": FORMAT,
            "params_sha256": hashlib.sha256(data).hexdigest()}
    params_path = write_atomic(folder / f"{name}.msgpack", data)
    write_atomic(folder / f"{name}.json", to_json(meta))
    return params_path
