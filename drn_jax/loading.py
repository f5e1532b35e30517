"""Loading a trained DRN for inference: from a workdir, a checkpoint step, or a pretrained name.

`model_source` is the one rule for naming a model (the ``--pretrained``, ``--checkpoint`` and
``--workdir`` flags of every command, `drn_jax.cli.define_model_flags`), and `load_model` the one
way eval.py, drn-upscale, the exporters, warm starts and `drn_jax.pretrained` get it. Only the
parameters are read (the EMA when the run kept one): never the optimiser state.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import ml_collections

from drn_jax import checkpointing, model_factory, models, zoo
from drn_jax import config as config_lib
from drn_jax.rundir import DEFAULT_WORKDIR, RunDir

__all__ = ["SOURCE_KINDS", "LoadedModel", "ModelSource", "load_model", "model_source"]

SOURCE_KINDS = ("pretrained", "checkpoint", "workdir")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a trained model comes from.

    Attributes:
      kind: ``"pretrained"`` (a name in `drn_jax.zoo`), ``"checkpoint"`` (a step folder
        ``<workdir>/checkpoints/<step>``) or ``"workdir"`` (a training run: its latest checkpoint).
      location: the name or the folder.
    """

    kind: str
    location: str

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"a model source is one of {', '.join(SOURCE_KINDS)}; got {self.kind!r}")

    @property
    def run(self) -> RunDir | None:
        """The training run it belongs to (None for a pretrained model)."""
        if self.kind == "workdir":
            return RunDir(self.location)
        if self.kind == "checkpoint":  # <workdir>/checkpoints/<step>
            return RunDir(pathlib.Path(self.location).absolute().parent.parent)
        return None

    @classmethod
    def of_path(cls, path: str | os.PathLike) -> ModelSource:
        """A step folder ``<workdir>/checkpoints/<step>`` or, any other folder, a workdir."""
        path = pathlib.Path(path).expanduser()
        kind = "checkpoint" if path.name.isdigit() and path.parent.name == "checkpoints" else "workdir"
        return cls(kind, str(path))


def model_source(*, pretrained: str | None = None, checkpoint: str | os.PathLike | None = None,
                 workdir: str | os.PathLike | None = None,
                 default_workdir: str | None = DEFAULT_WORKDIR) -> ModelSource:
    """The model named by at most one of `pretrained`, `checkpoint` and `workdir`; with none of
    them, the workdir `default_workdir` (``runs/default``, what train.py writes).

    Raises ``ValueError`` for two of them, or none without a default.
    """
    given = [(kind, value) for kind, value in zip(SOURCE_KINDS, (pretrained, checkpoint, workdir)) if value]
    if len(given) == 2:
        raise ValueError(f"give --{given[0][0]} or --{given[1][0]}, not both")
    if len(given) > 2:
        raise ValueError("give one of --pretrained, --checkpoint or --workdir")
    if given:
        kind, value = given[0]
        return ModelSource(kind, str(value))
    if default_workdir is None:
        raise ValueError("give --pretrained, --checkpoint or --workdir")
    return ModelSource("workdir", default_workdir)


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


def load_model(source: ModelSource | None = None, *, workdir: str | os.PathLike | None = None,
               checkpoint: str | os.PathLike | None = None, pretrained: str | None = None,
               platform: str | None = None, **model_overrides: Any) -> LoadedModel:
    """The model of `source`, or of the one of `pretrained`, `checkpoint` and `workdir` given
    (`model_source`, without a default).

    The model is built for inference on `platform` (default ``jax.default_backend()``; see
    :func:`drn_jax.model_factory.create_model`, which resolves ``conv="auto"`` by it).
    `model_overrides` replace DRN fields (e.g. ``conv="xla"``, ``dtype=jnp.bfloat16``).

    Raises one-line ``FileNotFoundError`` (no such run, checkpoint or model), ``ValueError``
    (corrupt files, two sources) and `drn_jax.errors.ConfigError` (unreadable config).
    """
    if source is None:
        source = model_source(pretrained=pretrained, checkpoint=checkpoint, workdir=workdir,
                              default_workdir=None)
    elif workdir or checkpoint or pretrained:
        raise ValueError("give load_model a ModelSource or one keyword, not both")
    if source.kind == "pretrained":
        meta, params = zoo.read(source.location)
        config = config_lib.from_saved(meta["config"])
        model = model_factory.create_model(config, platform=platform, training=False, **model_overrides)
        return LoadedModel(config, model, {"params": params}, source=source.location)
    if source.kind == "checkpoint":
        run, step = RunDir.of_checkpoint(source.location)
    else:
        run, step = RunDir(source.location), None
    if not run.checkpoints.is_dir():
        raise FileNotFoundError(f"no checkpoint in {run.path}; run `python train.py --workdir={run.path}` first")
    config = run.load_config()
    model = model_factory.create_model(config, platform=platform, training=False, **model_overrides)
    abstract = model_factory.abstract_params(model)
    # Onto this process's first device, whatever topology saved it (e.g. a pod slice).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract)
    params, step = checkpointing.restore_params(run, step, abstract, ema=config.ema_decay > 0)
    source = str(run.checkpoints / str(step)) if source.kind == "checkpoint" else str(run.path)
    return LoadedModel(config, model, {"params": params}, source=source, step=step, run=run)
