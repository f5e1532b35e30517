"""Checkpoints: orbax `CheckpointManager` for training, and loading a model for inference.

Layout of a run: ``<workdir>/config.json`` and ``<workdir>/checkpoints/<step>/`` with two
items, ``state`` (the whole `TrainState`) and ``data`` (the input stream's position, so a
resumed run reads the same batches as an uninterrupted one). Orbax writes each step
into a temporary folder and renames it when complete, so a crash during a save never
leaves a checkpoint that `latest_step` would pick.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """Saves and restores (TrainState, data position) pairs under `directory`."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
        except OSError as err:
            raise OSError(f"{self.directory}: cannot create the checkpoint folder ({err.strerror or err}); "
                          "choose a writable --workdir") from None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def has(self, step: int) -> bool:
        return step in self._manager.all_steps()

    def restore_or(self, state: Any) -> tuple[Any, int]:
        """(latest saved state, its data position), or (`state`, 0) when nothing is saved.

        `state` also gives the structure, dtypes and shardings to restore into.
        """
        step = self.latest_step()
        if step is None:
            return state, 0
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        return restored.state, int(restored.data["position"])

    def save(self, step: int, state: Any, data_position: int) -> None:
        """Starts an asynchronous save of `state` (returns before the write finishes)."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"position": int(data_position)})))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run saved in `workdir/config.json`."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_for_inference(workdir: str | pathlib.Path | None = None, checkpoint: str | pathlib.Path | None = None
                       ) -> tuple[ml_collections.ConfigDict, Any, dict[str, Any]]:
    """(config, model, variables) from a run's latest checkpoint or from one step folder.

    Args:
      workdir: a training workdir; its latest checkpoint is used.
      checkpoint: a step folder ``<workdir>/checkpoints/<step>``; overrides `workdir`.

    The parameter EMA is used when the run kept one. Raises `FileNotFoundError` with a
    one-line message when there is no checkpoint.
    """
    from drn_jax import training  # deferred: training pulls in optax and the model

    if checkpoint is not None:
        step_dir = pathlib.Path(checkpoint).absolute()
        if not step_dir.is_dir() or not step_dir.name.isdigit():
            raise FileNotFoundError(f"{step_dir}: not a checkpoint step folder (<workdir>/checkpoints/<step>)")
        workdir, step = step_dir.parent.parent, int(step_dir.name)
    elif workdir is not None:
        step = None
    else:
        raise ValueError("give a workdir or a checkpoint")
    workdir = pathlib.Path(workdir)
    if not (workdir / CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(f"no checkpoint in {workdir}; run `python train.py --workdir={workdir}` first")
    config = load_config(workdir)
    model = training.create_model(config)
    abstract = jax.eval_shape(lambda: training.create_train_state(
        config, model, training.create_optimizer(config), jax.random.key(0)))
    manager = ocp.CheckpointManager((workdir / CHECKPOINT_DIR).absolute(), item_names=("state", "data"))
    try:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(f"no checkpoint in {workdir}; run `python train.py --workdir={workdir}` first")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    finally:
        manager.close()
    state = restored.state
    params = state.ema_params if state.ema_params is not None else state.params
    return config, model, {"params": params}
