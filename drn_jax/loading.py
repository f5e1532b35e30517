"""Loading a trained DRN for inference: from a workdir, a checkpoint step, or a pretrained name.

Only the parameters are read (the EMA when the run kept one): never the optimiser state.
This is the one way eval.py, drn-upscale, the exporters and `drn_jax.pretrained` get a model.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from drn_jax import checkpointing, model_factory, models, zoo
from drn_jax import config as config_lib
from drn_jax.rundir import RunDir

__all__ = ["LoadedModel", "load_model"]


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready for ``model.apply(variables, lr, method="upscale")``.

    Attributes:
      config: the training config (a run's ``config.json`` or a pretrained model's).
      model: the DRN.
      variables: ``{"params": ...}`` on this process's first device.
      source: where it came from, for messages and cards (a workdir, a step folder, a name).
      step: the checkpoint step (None for a pretrained model).
      run: the training run, when it came from one.
    """

    config: ml_collections.ConfigDict
    model: models.DRN
    variables: dict[str, Any]
    source: str
    step: int | None = None
    run: RunDir | None = None

    def __iter__(self):  # (config, model, variables) = load_model(...)
        return iter((self.config, self.model, self.variables))


def load_model(*, workdir: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
               pretrained: str | None = None, platform: str | None = None,
               **model_overrides: Any) -> LoadedModel:
    """The model of one source: `pretrained` name, else `checkpoint` step folder, else `workdir`.

    The model is built for inference on `platform` (default ``jax.default_backend()``; see
    :func:`drn_jax.model_factory.create_model`, which resolves ``conv="auto"`` by it).
    `model_overrides` replace DRN fields (e.g. ``conv="xla"``, ``dtype=jnp.bfloat16``).

    Raises one-line ``FileNotFoundError`` (no such run, checkpoint or model), ``ValueError``
    (corrupt files, two sources) and `drn_jax.errors.ConfigError` (unreadable config).
    """
    if pretrained and checkpoint:
        raise ValueError("give --pretrained or --checkpoint, not both")
    if pretrained:
        meta, params = zoo.read(pretrained)
        config = config_lib.from_saved(meta["config"])
        model = model_factory.create_model(config, platform=platform, training=False, **model_overrides)
        return LoadedModel(config, model, {"params": params}, source=pretrained)
    if checkpoint is not None:
        run, step = RunDir.of_checkpoint(checkpoint)
    elif workdir is not None:
        run, step = RunDir(workdir), None
    else:
        raise ValueError("give a workdir, a checkpoint or a pretrained model")
    if not run.checkpoints.is_dir():
        raise FileNotFoundError(f"no checkpoint in {run.path}; run `python train.py --workdir={run.path}` first")
    config = run.load_config()
    model = model_factory.create_model(config, platform=platform, training=False, **model_overrides)
    abstract = model_factory.abstract_params(model)
    # Onto this process's first device, whatever topology saved it (e.g. a pod slice).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract)
    params, step = checkpointing.restore_params(run, step, abstract, ema=config.ema_decay > 0)
    source = str(run.checkpoints / str(step)) if checkpoint is not None else str(run.path)
    return LoadedModel(config, model, {"params": params}, source=source, step=step, run=run)
