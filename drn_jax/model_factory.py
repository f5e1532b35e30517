"""Building the DRN that a config describes (``scale`` and ``model.*``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from drn_jax import models, ops

__all__ = ["abstract_params", "create_model"]


def create_model(config: ml_collections.ConfigDict | Mapping[str, Any], *, platform: str | None = None,
                 training: bool = True, **overrides: Any) -> models.DRN:
    """The DRN of `config` (a run's config, or a saved one over the defaults), built for the
    platform its programs are compiled for.

    ``config.model.conv = "auto"`` is resolved here to ``"winograd"`` or ``"xla"``
    (:func:`drn_jax.ops.resolve_conv_algorithm`): XLA's convolution for every platform but
    the CPU; on a CPU, the faster of the two for this feature width, for training or for
    inference. An explicit ``"winograd"``, ``"xla"`` or ``"packed"`` is kept.

    Args:
      config: ``scale`` and ``model.*``.
      platform: the platform of the devices the model's programs are compiled for: ``"cpu"``,
        ``"tpu"``, ``"gpu"`` (what ``jax.Device.platform`` says; for a mesh,
        ``mesh.devices.flat[0].platform``). Default: ``jax.default_backend()``. A program
        compiled ahead of time for a TPU from a CPU host passes ``platform="tpu"``.
      training: whether the model is for a training step (True) or for inference only
        (evaluation, upscaling, export: :func:`drn_jax.loading.load_model` passes False).
      overrides: replace module fields, e.g. ``conv="xla"`` for an export, which must not use
        the CPU-only Winograd kernels, or ``dtype=jnp.bfloat16`` for inference on an
        accelerator; a ``conv`` of ``"auto"`` here is resolved too.
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
    fields["conv"] = ops.resolve_conv_algorithm(
        fields["conv"], platform=platform or jax.default_backend(), features=int(fields["features"]),
        training=training)
    return models.DRN(**fields)


def abstract_params(model: models.DRN, lr_size: int = 8) -> Any:
    """The parameter tree of `model` as ``jax.ShapeDtypeStruct``s, without computing any.

    DRN's parameters do not depend on the image size; `lr_size` is only the traced input's side.
    Nor on the convolution algorithm: the model is traced with XLA's convolution, ~5× quicker
    to trace than the Winograd kernels (this runs on every model load), and the key is made
    inside the trace, so that nothing is compiled.
    """
    lr = jax.ShapeDtypeStruct((1, lr_size, lr_size, 3), jnp.float32)
    plain = model.clone(conv="xla")
    return jax.eval_shape(lambda x: plain.init(jax.random.key(0), x), lr)["params"]
