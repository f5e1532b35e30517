"""Building the DRN that a config describes (``scale`` and ``model.*``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from drn_jax import models

__all__ = ["abstract_params", "create_model"]


def create_model(config: ml_collections.ConfigDict | Mapping[str, Any], **overrides: Any) -> models.DRN:
    """The DRN of `config` (a run's config, or a saved one over the defaults).

    `overrides` replace module fields, e.g. ``conv="xla"`` for an export, which must not use
    the CPU-only Winograd kernels, or ``dtype=jnp.bfloat16`` for inference on an accelerator.
    """
    model = config["model"]
    fields = dict(
        scale=int(config["scale"]),
        features=model["features"],
        modules_per_block=model["modules_per_block"],
        dual=model["dual"],
        progressive=model["progressive"],
        image_residual=model["image_residual"],
        dtype=jnp.dtype(model["dtype"]),
        remat=model["remat"],
        conv=model["conv"],
    )
    fields.update(overrides)
    return models.DRN(**fields)


def abstract_params(model: models.DRN, lr_size: int = 8) -> Any:
    """The parameter tree of `model` as ``jax.ShapeDtypeStruct``s, without computing any.

    DRN's parameters do not depend on the image size; `lr_size` is only the traced input's side.
    """
    lr = jax.ShapeDtypeStruct((1, lr_size, lr_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), lr)["params"]
