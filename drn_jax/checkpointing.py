"""Checkpoints: orbax `CheckpointManager` for training, and loading a model for inference.

Layout of a run: ``<workdir>/config.json`` and ``<workdir>/checkpoints/<step>/`` with two
items, ``state`` (the whole `TrainState`) and ``data`` (the input stream's position of
every process, so a resumed run reads the same batches as an uninterrupted one).

What survives a crash:

* Orbax writes each step into ``<step>.orbax-checkpoint-tmp`` and renames it when
  complete, so a crash (``kill -9``, preemption) during a save never leaves a checkpoint
  that `latest_step` would pick. Leftover temporary folders are deleted when the next run
  opens the folder.
* A finished checkpoint that cannot be read (e.g. files truncated by a power loss) is
  skipped with a warning, the run resumes from the newest one that can be read, and the
  unreadable step folder is renamed ``<step>.unreadable`` (kept for inspection, never deleted).
* Resuming into a config whose model differs from the saved one is refused before
  anything is restored or compiled (`check_compatible`).
* Errors writing a checkpoint (full disk, read-only folder) are one-line `OSError`\\s naming
  the folder; the earlier checkpoints are untouched (orbax deletes old steps only after a
  new one is complete).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import re
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from drn_jax import config as config_lib
from drn_jax.config import ConfigError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
UNREADABLE_SUFFIX = ".unreadable"

# Config fields that decide the structure of the saved state: resuming with other values
# cannot restore (or would silently train another model).
STATE_FIELDS = ("scale", "model.features", "model.modules_per_block", "model.dual",
                "model.progressive", "model.image_residual")

# Test-only hook: "<seconds>" or "<step>:<seconds>". Every checkpoint commit (or only that
# step's) prints "test hook: committing checkpoint <path>" to stderr, then sleeps that long
# before orbax's final rename, so tests can kill a run while a save is in flight. Never set
# it otherwise.
TEST_COMMIT_DELAY_ENV = "DRN_TEST_COMMIT_DELAY"


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) if str(err).strip() else type(err).__name__
    return text[:300]


# tensorstore (which orbax writes through) raises ValueError("RESOURCE_EXHAUSTED: ... No space
# left on device [os_error_code='28']") rather than OSError.
_STORAGE_STATUS = re.compile(r"\b(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|DATA_LOSS|"
                             r"FAILED_PRECONDITION)\b|os_error_code")


def _is_storage_error(err: BaseException) -> bool:
    return isinstance(err, OSError) or bool(_STORAGE_STATUS.search(str(err)))


def _io_reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    code = re.search(r"os_error_code='?(\d+)", str(err))
    if code:
        return os.strerror(int(code.group(1)))
    if "RESOURCE_EXHAUSTED" in str(err):
        return os.strerror(errno.ENOSPC)
    return _first_line(err)


# Set once orbax has failed to write: its teardown then prints noise the one-line error explains.
_storage_failed = threading.Event()


def _through_orbax(trace) -> bool:
    return trace is not None and any("orbax" in frame.filename for frame in traceback.extract_tb(trace))


def _from_orbax(record: logging.LogRecord) -> bool:
    if "orbax" in record.pathname or "orbax" in record.getMessage():
        return True
    return _through_orbax(record.exc_info[2] if record.exc_info else None)


def _is_teardown_noise(error: BaseException | None) -> bool:
    text = str(error)
    return isinstance(error, RuntimeError) and ("Event loop is closed" in text or "interpreter shutdown" in text)


class _QuietStorageErrors(logging.Filter):
    """Drops orbax's background-thread tracebacks for write errors.

    Orbax logs a failed asynchronous write (with its traceback) from several threads and
    asyncio tasks before the error reaches `Checkpointer.wait`, which reports it as one
    line. Set DRN_DEBUG=1 to see them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info or os.environ.get("DRN_DEBUG"):
            return True
        error = record.exc_info[1]
        if error is None or not _from_orbax(record):
            return True
        if _is_storage_error(error):
            _storage_failed.set()
            return False
        return not (_storage_failed.is_set() and _is_teardown_noise(error))


_QUIET = _QuietStorageErrors()
_previous_hooks: dict[str, Any] = {}


def _unraisablehook(unraisable) -> None:
    # After a failed write, tensorstore's callbacks into orbax's closed event loop raise
    # "Event loop is closed" with no object to blame, possibly before the failure is logged;
    # Python would print each traceback.
    error = unraisable.exc_value
    closed_loop = (unraisable.object is None and isinstance(error, RuntimeError)
                   and "Event loop is closed" in str(error))
    if not os.environ.get("DRN_DEBUG") and (closed_loop or (_storage_failed.is_set() and _is_teardown_noise(error))):
        return
    _previous_hooks["unraisable"](unraisable)


def _threading_excepthook(args) -> None:
    # An orbax worker thread that dies of the write error already reported in one line.
    if (not os.environ.get("DRN_DEBUG") and _through_orbax(args.exc_traceback)
            and (_is_storage_error(args.exc_value) or _is_teardown_noise(args.exc_value))):
        _storage_failed.set()
        return
    _previous_hooks["thread"](args)


def _quiet_storage_errors() -> None:
    """Installs the filters above (once): they only drop orbax's noise about failed writes."""
    for name in ("absl", "asyncio", "concurrent.futures"):
        target = logging.getLogger(name)
        if _QUIET not in target.filters:
            target.addFilter(_QUIET)
    if sys.unraisablehook is not _unraisablehook:
        _previous_hooks["unraisable"] = sys.unraisablehook
        sys.unraisablehook = _unraisablehook
    if threading.excepthook is not _threading_excepthook:
        _previous_hooks["thread"] = threading.excepthook
        threading.excepthook = _threading_excepthook


def _temporary_path_class():
    setting = os.environ.get(TEST_COMMIT_DELAY_ENV)
    if not setting:
        return None  # orbax's default
    import asyncio

    from orbax.checkpoint._src.path import atomicity

    step, _, seconds = setting.rpartition(":")

    class _SlowCommit(atomicity.AtomicRenameTemporaryPath):
        async def finalize(self, *args, **kwargs):
            if not step or self.get_final().name == step:
                print(f"test hook: committing checkpoint {self.get()}", file=sys.stderr, flush=True)
                await asyncio.sleep(float(seconds))
            return await super().finalize(*args, **kwargs)

    return _SlowCommit


class Checkpointer:
    """Saves and restores (TrainState, data positions) pairs under `directory`."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        _quiet_storage_errors()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            # A run killed during a save leaves <step>.orbax-checkpoint-tmp behind.
            cleanup_tmp_directories=True, temporary_path_class=_temporary_path_class())
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
                               self.directory, step, _first_line(err))
                unreadable.append(step)
                last_error = err
                continue
            if unreadable:
                self._set_aside(unreadable)
            return restored.state, position
        raise OSError(f"{self.directory}: no checkpoint can be restored (step {steps[0]}: "
                      f"{_first_line(last_error)}); use a new --workdir or the same config")

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
            from jax.experimental import multihost_utils
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
            if not _is_storage_error(err):
                raise
            raise self._write_error(self._saving or step, err) from None
        self._saving = step

    def _write_error(self, step: int | None, err: BaseException) -> OSError:
        _storage_failed.set()
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
            if not _is_storage_error(err):
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


def check_compatible(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` when `workdir`'s saved config describes another model.

    Resuming restores the saved state into `config`'s model, so the fields in
    `STATE_FIELDS` (and whether a parameter EMA is kept) must match the saved
    ``config.json``. Checked before restoring, so nothing is compiled or overwritten.
    """
    workdir = pathlib.Path(workdir)
    path = workdir / CONFIG_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the saved config ({_first_line(err)}); "
                          "use a new --workdir") from None

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
        raise ConfigError(f"{workdir} holds checkpoints of another model ({'; '.join(differences)}); "
                          "use a new --workdir or the same config")


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run saved in `workdir/config.json`."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {workdir} a training workdir?")
    return config_lib.from_saved(json.loads(path.read_text()))


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
    # Onto this process's first device, whatever topology saved it (e.g. a pod slice).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract)
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
