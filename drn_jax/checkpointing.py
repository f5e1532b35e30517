"""Checkpoints: orbax `CheckpointManager` for training, and the parameters alone for inference.

Layout of a run: ``<workdir>/config.json`` and ``<workdir>/checkpoints/<step>/`` with two
items, ``state`` (the whole `TrainState`) and ``data`` (the input stream's position of
every process, so a resumed run reads the same batches as an uninterrupted one).

What survives a crash: docs/internals.md#checkpoints-and-crashes.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from drn_jax.errors import ConfigError, one_line
from drn_jax.rundir import RunDir

logger = logging.getLogger(__name__)

UNREADABLE_SUFFIX = ".unreadable"

# Config fields that decide the structure of the saved state: resuming with other values
# cannot restore (or would silently train another model).
STATE_FIELDS = ("scale", "model.features", "model.modules_per_block", "model.dual",
                "model.progressive", "model.image_residual")


# tensorstore (which orbax writes through) raises ValueError("RESOURCE_EXHAUSTED: ... No space
# left on device [os_error_code='28']") rather than OSError.
_STORAGE_STATUS = re.compile(r"\b(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|DATA_LOSS|"
                             r"FAILED_PRECONDITION)\b|os_error_code")


def is_storage_error(err: BaseException) -> bool:
    """Whether `err` is a failure of the storage (an OSError, or tensorstore's status text)."""
    return isinstance(err, OSError) or bool(_STORAGE_STATUS.search(str(err)))


def _io_reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    code = re.search(r"os_error_code='?(\d+)", str(err))
    if code:
        return os.strerror(int(code.group(1)))
    if "RESOURCE_EXHAUSTED" in str(err):
        return os.strerror(errno.ENOSPC)
    return one_line(err, 300)


# Set once a checkpoint write has failed: `drn_jax.orbax_noise` then also drops the teardown
# noise that the failure causes in orbax.
WRITE_FAILED = threading.Event()


class Checkpointer:
    """Saves and restores (TrainState, data positions) pairs under `directory`.

    `temporary_path_class` is orbax's (``None``: its atomic rename); tests pass one that holds
    the commit open to kill a run inside it.
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True,
                 temporary_path_class: Any = None):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            # A run killed during a save leaves <step>.orbax-checkpoint-tmp behind.
            cleanup_tmp_directories=True, temporary_path_class=temporary_path_class)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
            self._manager.all_steps()  # surfaces an unreadable folder here, not later
        except OSError as err:
            raise OSError(f"{self.directory}: cannot create or read the checkpoint folder "
                          f"({_io_reason(err)}); choose a writable --workdir") from None
        self._saving: int | None = None  # the step of the last save not yet known to be complete

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def has(self, step: int) -> bool:
        return step in self._manager.all_steps()

    def restore_or(self, state: Any, *, process_index: int | None = None,
                   process_count: int | None = None) -> tuple[Any, int | None]:
        """(latest readable saved state, this process's data position), or (`state`, 0).

        `state` gives the structure, dtypes and shardings to restore into. The position is
        None when the checkpoint was written by a different number of processes (their
        streams differ, so no position of the saved run continues this one exactly).
        Checkpoints that cannot be read are skipped, newest first, with a warning; once an
        older one restores, the unreadable ones are renamed ``<step>.unreadable``.
        """
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return state, 0
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        unreadable: list[int] = []
        last_error: BaseException | None = None
        for step in steps:
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
                position = self._position(restored.data, process_index, process_count)
            except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many types
                logger.warning("%s: checkpoint %d cannot be read (%s); trying an older one",
                               self.directory, step, one_line(err, 300))
                unreadable.append(step)
                last_error = err
                continue
            if unreadable:
                self._set_aside(unreadable)
            return restored.state, position
        raise OSError(f"{self.directory}: no checkpoint can be restored (step {steps[0]}: "
                      f"{one_line(last_error, 300)}); use a new --workdir or the same config")

    @staticmethod
    def _position(data: Any, process_index: int, process_count: int) -> int | None:
        positions = data.get("positions")
        if positions is None:  # written before positions were saved per process
            positions = [data["position"]]
        if len(positions) != process_count:
            return None
        return int(positions[process_index])

    def _set_aside(self, steps: Sequence[int]) -> None:
        if jax.process_index() == 0:
            for step in steps:
                source = self.directory / str(step)
                target = self.directory / f"{step}{UNREADABLE_SUFFIX}"
                if target.exists():
                    target = self.directory / f"{step}{UNREADABLE_SUFFIX}-{time.time_ns()}"
                source.rename(target)
                logger.warning("%s: unreadable checkpoint moved to %s", source, target.name)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("drn_jax_checkpoint_set_aside")
        self._manager.reload()

    def save(self, step: int, state: Any, data_positions: int | Sequence[int]) -> None:
        """Starts an asynchronous save of `state` (returns before the write finishes).

        `data_positions` holds every process's position, indexed by process (an int for one
        process). An error of an earlier save surfaces here or in `wait`/`close`.
        """
        positions = [int(p) for p in np.atleast_1d(np.asarray(data_positions))]
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"position": positions[0], "positions": positions})))
        except Exception as err:  # noqa: BLE001 - an earlier asynchronous save may fail here
            if not is_storage_error(err):
                raise
            raise self._write_error(self._saving or step, err) from None
        self._saving = step

    def _write_error(self, step: int | None, err: BaseException) -> OSError:
        WRITE_FAILED.set()
        try:
            self._manager.reload()
            kept = sorted(self._manager.all_steps())  # from disk: not the failed save
        except Exception:  # noqa: BLE001 - the write error is the one to report
            kept = []
        if step is not None:
            kept = [s for s in kept if s != step]
        kept_text = (f"checkpoint {kept[0]} is kept" if len(kept) == 1 else
                     f"checkpoints {', '.join(map(str, kept))} are kept" if kept else "no earlier checkpoint")
        which = f"checkpoint {step}" if step is not None else "a checkpoint"
        return OSError(f"{self.directory}: cannot write {which} ({_io_reason(err)}); {kept_text}; "
                       "free some space or choose a writable --workdir")

    def wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            if not is_storage_error(err):
                raise
            raise self._write_error(self._saving, err) from None
        self._saving = None

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001 - the error of the save was raised by wait()
                pass


def check_compatible(workdir: str | pathlib.Path | RunDir, config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` when `workdir`'s saved config describes another model.

    Resuming restores the saved state into `config`'s model, so the fields in
    `STATE_FIELDS` (and whether a parameter EMA is kept) must match the saved
    ``config.json``. Checked before restoring, so nothing is compiled or overwritten.
    """
    run = workdir if isinstance(workdir, RunDir) else RunDir(workdir)
    if not run.has_config():
        return
    saved = run.saved_config()

    def get(tree, dotted):
        for key in dotted.split("."):
            try:
                tree = tree[key]
            except (KeyError, TypeError, AttributeError):
                return None
        return tree

    differences = []
    for field in STATE_FIELDS:
        old, new = get(saved, field), get(config, field)
        if old is not None and old != new:
            differences.append(f"{field} {old!r} saved, {new!r} requested")
    old_ema = get(saved, "ema_decay")
    if old_ema is not None and (old_ema > 0) != (config.ema_decay > 0):
        differences.append(f"ema_decay {old_ema!r} saved, {config.ema_decay!r} requested")
    if differences:
        raise ConfigError(f"{run.path} holds checkpoints of another model ({'; '.join(differences)}); "
                          "use a new --workdir or the same config")


def restore_params(run: RunDir, step: int | None, abstract_params: Any, *, ema: bool) -> tuple[Any, int]:
    """``(params, step)``: the parameters alone (or their EMA) of a checkpoint, for inference.

    Only the ``params`` (or ``ema_params``) subtree of the saved state is read: no optimiser
    moments, no step counter. `abstract_params` (``jax.ShapeDtypeStruct``s with shardings) gives
    the structure, dtypes and placement. `step` None takes the newest checkpoint.

    Raises ``FileNotFoundError`` with a one-line message when there is no such checkpoint.
    """
    steps = run.saved_steps()
    if step is None and steps:
        step = steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint in {run.path}; run `python train.py --workdir={run.path}` first")
    key = "ema_params" if ema else "params"
    item = {key: abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    path = (run.checkpoints / str(step) / "state").absolute()
    with ocp.PyTreeCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True))
        except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many types
            raise OSError(f"{path}: cannot read the checkpoint's parameters ({one_line(err, 300)})") from None
    return restored[key], step
