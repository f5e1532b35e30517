"""Warm start: a DRN's initial parameters from a trained DRN of a lower (or the same) scale.

EDSR trains its x3 and x4 models from its x2 model; DRN's blocks make the same move natural.
Every primal block doubles the resolution of its features and every dual block halves an
image, whatever the scale, so an x8 DRN's blocks 0 and 1 do what an x4 DRN's blocks 0 and 1 do
(an image at 1/8 of the HR size looks much like one at 1/4), and its extra block 2 starts as a
copy of the x4's last block. Parameters outside the blocks are copied by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from drn_jax import loading, model_factory, models, zoo
from drn_jax.errors import ConfigError

__all__ = ["grow_params", "initial_params"]

_BLOCK = re.compile(r"^(primal_blocks|dual_blocks)_(\d+)$")


def _source_key(key: str, source: Mapping[str, Any]) -> str:
    """The source key that initialises target key `key`: the same block, or the last one."""
    match = _BLOCK.match(key)
    if match is None:
        return key
    kind, index = match.group(1), int(match.group(2))
    available = sorted(int(m.group(2)) for k in source if (m := _BLOCK.match(k)) and m.group(1) == kind)
    if not available:
        return key
    return f"{kind}_{min(index, available[-1])}"


def grow_params(source: Mapping[str, Any], target: Mapping[str, Any], *, name: str = "init_from") -> Any:
    """`target`'s tree with every leaf taken from `source`, block by block.

    Args:
      source: the trained DRN's ``params`` (any scale up to the target's).
      target: a freshly initialised DRN's ``params``, for its structure, shapes and dtypes.
      name: what to call the source in errors.

    Returns:
      A tree shaped as `target`: target block ``i`` holds source block ``min(i, last)``'s
      values (the same for primal and dual blocks); other entries are copied by name.

    Raises:
      ConfigError: when a target entry has no counterpart or its shape differs (another width
        or depth), naming the first such entry.
    """
    def fill(src: Any, tgt: Any, path: str) -> Any:
        if not isinstance(tgt, Mapping):
            if not hasattr(src, "shape") or tuple(src.shape) != tuple(tgt.shape):
                got = getattr(src, "shape", type(src).__name__)
                raise ConfigError(f"{name}: {path} has shape {got}, the model needs {tuple(tgt.shape)}; "
                                  "warm-start from a model of the same features and modules_per_block")
            return jnp.asarray(src, dtype=tgt.dtype)
        if not isinstance(src, Mapping):
            raise ConfigError(f"{name}: {path} is not a module of the source model")
        out = {}
        for key, value in tgt.items():
            key_in_source = _source_key(key, src)
            if key_in_source not in src:
                raise ConfigError(f"{name}: the source model has no {path}/{key}; warm-start from a DRN "
                                  "with the same dual and progressive settings")
            out[key] = fill(src[key_in_source], value, f"{path}/{key}")
        return out

    return jax.tree.map(lambda x: x, fill(source, target, "params"))


def initial_params(config: ml_collections.ConfigDict, model: models.DRN) -> Any:
    """The warm-start parameters ``config.init_from`` names, grown to `model` (see the module).

    ``init_from`` is a pretrained model's name (`drn_jax.zoo`) or a training workdir. Raises
    `ConfigError` for a source of a higher scale or another width, depth or block layout.
    """
    spec = config.init_from
    if spec in zoo.available():
        source = loading.load_model(pretrained=spec)
    else:
        try:
            source = loading.load_model(workdir=spec)
        except FileNotFoundError:
            raise ConfigError(f"init_from={spec!r} is neither a pretrained model "
                              f"({', '.join(zoo.available()) or 'none'}) nor a workdir with checkpoints") from None
    if source.config.scale > config.scale:
        raise ConfigError(f"init_from={spec!r} is an x{source.config.scale} model; warm-start "
                          f"x{config.scale} from a model of scale x{config.scale} or lower")
    target = model_factory.abstract_params(model)
    return grow_params(jax.device_get(source.variables["params"]), target, name=f"init_from={spec!r}")
