"""Building the DRN that a config describes (``scale`` and ``model.*``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections

from drn_jax import models

__all__ = ["create_model"]


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
