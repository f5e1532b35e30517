"""Several training runs in lockstep in one process: a setting's seeds in one compiled program.

:func:`train_in_lockstep` stacks the states of runs that differ only in ``seed`` and steps
them with one compiled program (a `jax.vmap` of the training step inside a `jax.lax.scan`);
each run equals the same config trained alone, to float rounding.

How it works: docs/internals.md#training-runs-in-lockstep.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from drn_jax import checkpointing, data, evaluation, models, reporting, training
from drn_jax import config as config_lib
from drn_jax.errors import ConfigError, NonFiniteLossError, RunError
from drn_jax.model_factory import create_model
from drn_jax.ops.dihedral import dihedral
from drn_jax.rundir import RunDir
from drn_jax.train_state import TrainState, create_optimizer, create_train_state, eval_params

__all__ = ["LockstepRun", "OverBudgetError", "SHARED_FIELDS", "chunk_steps", "train_in_lockstep"]

# Fields every run of a lockstep batch must share: they step together, and runs of one seed
# share one data stream.
SHARED_FIELDS = ("num_train_steps", "batch_size", "log_every_steps", "eval_every_steps",
                 "checkpoint_every_steps", "data.train", "data.val", "data.val_limit",
                 "data.hr_patch_size", "data.shuffle_buffer", "data.crops_per_image",
                 "data.tfds_data_dir")
# Host bytes of one chunk's crops (all seeds) at most; longer chunks are split.
MAX_CHUNK_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class LockstepRun:
    """One run of a lockstep batch: its name (for messages), config and folder."""

    name: str
    config: ml_collections.ConfigDict
    workdir: pathlib.Path


class OverBudgetError(RunError):
    """The measured speed says the runs would not finish before the deadline."""


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    for key in dotted.split("."):
        config = config[key]
    return config


def chunk_steps(config: ml_collections.ConfigDict, start_step: int, seeds: int) -> int:
    """Steps per compiled chunk: the largest that ends on every log, evaluation and checkpoint
    step, on the last step and on `start_step`, with the crops of `seeds` seeds under
    `MAX_CHUNK_BYTES`. Every chunk then has this one length (one compilation per setting)."""
    period = math.gcd(config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps,
                      config.num_train_steps, start_step)
    crop_bytes = seeds * config.batch_size * config.data.hr_patch_size ** 2 * 3
    return next(k for k in range(period, 0, -1) if period % k == 0 and (k * crop_bytes <= MAX_CHUNK_BYTES or k == 1))


@dataclasses.dataclass
class _Setting:
    """The runs of one setting (configs equal but for the seed), stacked."""

    runs: list[LockstepRun]
    seed_index: tuple[int, ...]  # each run's seed, as an index into the batch's seed axis
    model: models.DRN
    step_fn: Callable
    states: TrainState  # stacked over the runs
    program: Any = None
    metrics: Any = None


def _setting_key(config: ml_collections.ConfigDict) -> str:
    saved = json.loads(json.dumps(config.to_dict(), default=str))
    saved.pop("seed")
    return json.dumps(saved, sort_keys=True)


def _check_runs(runs: Sequence[LockstepRun]) -> None:
    if not runs:
        raise ValueError("train_in_lockstep: no runs")
    names = [run.name for run in runs]
    if len(set(names)) != len(names) or len({run.workdir.absolute() for run in runs}) != len(runs):
        raise ValueError(f"train_in_lockstep: run names and folders must be distinct: {', '.join(names)}")
    first = runs[0]
    for run in runs:
        config = run.config
        config_lib.validate(config, num_devices=1, num_processes=1)
        if config.distributed or config.init_from:
            raise ConfigError(f"{run.name}: lockstep runs train from scratch in one process; "
                              "set distributed=False and init_from=''")
        for field in SHARED_FIELDS:
            if _get(config, field) != _get(first.config, field):
                raise ConfigError(f"{run.name}: {field}={_get(config, field)!r} differs from "
                                  f"{first.name}'s {_get(first.config, field)!r}; runs in lockstep share it")


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _member(tree: Any, index: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[index], tree)


def _make_program(step_fn: Callable, seed_index: tuple[int, ...]) -> Callable:
    """``chunk(states, hr, transforms) -> (states, metrics)`` over K steps, jitted.

    ``hr`` is the uint8 ``(seeds, K, B, P, P, 3)`` crops of every seed, ``transforms`` their
    ``(seeds, K, B)`` dihedral transforms; the program takes its runs' seeds, applies the
    transforms (as `training.prefetch_to_mesh` does) and scans the vmapped step. Metrics come
    back for every step, ``(K, runs)`` per name.
    """
    index = np.asarray(seed_index)

    def chunk(states: TrainState, hr: jax.Array, transforms: jax.Array):
        crops = jax.vmap(jax.vmap(dihedral))(hr[index], transforms[index])  # (runs, K, B, P, P, 3)
        return jax.lax.scan(lambda carry, batch: jax.vmap(step_fn)(carry, batch), states,
                            jnp.swapaxes(crops, 0, 1))

    return jax.jit(chunk, donate_argnums=(0,))


def _read_chunk(streams: Sequence[Iterator[dict[str, np.ndarray]]], steps: int
                ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(uint8 (seeds, K, B, P, P, 3), int32 (seeds, K, B), each stream's next position)."""
    hr, transforms, positions = [], [], []
    for stream in streams:
        batches = [next(stream) for _ in range(steps)]
        hr.append(np.stack([batch["hr"] for batch in batches]))
        transforms.append(np.stack([batch["transform"] if "transform" in batch
                                    else np.zeros(len(batch["hr"]), np.int32) for batch in batches]))
        positions.append(int(batches[-1]["position"].max()) + 1)
    return np.stack(hr), np.stack(transforms).astype(np.int32), positions

def _restore_run(run: LockstepRun, model: models.DRN, optimizer: Any, device: jax.Device
                 ) -> tuple[checkpointing.Checkpointer, TrainState, int]:
    """`run`'s checkpointer and its state and data position: initial, or from its latest checkpoint."""
    checkpointer = checkpointing.Checkpointer(RunDir(run.workdir).checkpoints, keep=run.config.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        checkpointing.check_compatible(RunDir(run.workdir), run.config)
    state = jax.device_put(create_train_state(run.config, model, optimizer, jax.random.key(run.config.seed)),
                           device)
    state, position = checkpointer.restore_or(state)
    if position is None:
        raise ValueError(f"{run.name}: its checkpoint was written by several processes; "
                         "lockstep runs resume only one-process checkpoints")
    return checkpointer, state, position


def _build_settings(runs: Sequence[LockstepRun], seeds: list[int], device: jax.Device, mesh: jax.sharding.Mesh
                    ) -> tuple[list[_Setting], dict[str, checkpointing.Checkpointer], dict[str, tuple[int, int]]]:
    """The settings with their initial or restored states stacked, each run's checkpointer, and
    each run's restored ``(step, data position)``."""
    groups: dict[str, list[LockstepRun]] = {}
    for run in runs:
        groups.setdefault(_setting_key(run.config), []).append(run)
    settings: list[_Setting] = []
    checkpointers: dict[str, checkpointing.Checkpointer] = {}
    restored: dict[str, tuple[int, int]] = {}  # run -> (step, data position)
    for members in groups.values():
        if len({run.config.seed for run in members}) != len(members):
            raise ConfigError(f"{', '.join(r.name for r in members)}: the same config and seed twice")
        config = members[0].config
        model, optimizer = create_model(config), create_optimizer(config)
        states = []
        for run in members:
            checkpointers[run.name], state, position = _restore_run(run, model, optimizer, device)
            restored[run.name] = (int(state.step), position)
            states.append(state)
        settings.append(_Setting(members, tuple(seeds.index(run.config.seed) for run in members), model,
                                 training.make_train_step(config, model, optimizer, mesh), _stack(states)))
    return settings, checkpointers, restored


def _common_start(runs: Sequence[LockstepRun], restored: dict[str, tuple[int, int]]) -> tuple[int, dict[int, int]]:
    """The step every run resumes from and each seed's data position; both must agree across runs."""
    start_steps = {step for step, _ in restored.values()}
    if len(start_steps) != 1:
        raise ValueError("the runs' latest checkpoints are at different steps ("
                         + ", ".join(f"{name} {step}" for name, (step, _) in restored.items())
                         + "); lockstep runs resume together: remove the odd ones' folders")
    positions: dict[int, int] = {}
    for run in runs:
        position = positions.setdefault(run.config.seed, restored[run.name][1])
        if position != restored[run.name][1]:
            raise ValueError(f"{run.name}: its data position {restored[run.name][1]} differs from another "
                             f"run of seed {run.config.seed} at {position}; remove the odd folders")
    return start_steps.pop(), positions


@dataclasses.dataclass
class _Batch:
    """What the parts of one `train_in_lockstep` call share."""

    runs: Sequence[LockstepRun]
    first: ml_collections.ConfigDict  # the first run's config: the shared fields come from it
    seeds: list[int]  # sorted: the seed axis of the crops
    device: jax.Device
    settings: list[_Setting]
    checkpointers: dict[str, checkpointing.Checkpointer]
    start_step: int
    positions: dict[int, int]  # seed -> data position of its stream's next crop
    start_time: float

    def save(self, step: int) -> None:
        """Checkpoints every run at `step` with its seed's data position."""
        for setting in self.settings:
            for index, run in enumerate(setting.runs):
                self.checkpointers[run.name].save(step, _member(setting.states, index),
                                                  [self.positions[run.config.seed]])


class _RunFiles:
    """Each run's log.txt (its own console lines, what train_and_evaluate prints) and its writer."""

    def __init__(self, runs: Sequence[LockstepRun]):
        for run in runs:
            run.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = {run.name: open(RunDir(run.workdir).path / "log.txt", "a", buffering=1) for run in runs}
        self.writers = {run.name: reporting.RunWriter(RunDir(run.workdir), run.config,
                                                      echo=lambda line, log=self.logs[run.name]: log.write(line + "\n"))
                        for run in runs}

    def close(self, name: str) -> None:
        self.writers[name].close()
        self.logs[name].close()

    def close_all(self) -> None:
        for name in self.writers:
            self.close(name)


def _open_streams(batch: _Batch, train_source: Any, writers: dict[str, reporting.RunWriter]
                  ) -> list[Iterator[dict[str, np.ndarray]]]:
    """One training stream per seed, from its data position; each run's log names its source."""
    first = batch.first
    datasets = {seed: data.create_train_dataset(
        train_source, patch_size=first.data.hr_patch_size, batch_size=first.batch_size, seed=seed,
        shuffle_buffer=first.data.shuffle_buffer, start_position=batch.positions[seed], process_index=0,
        process_count=1, crops_per_image=first.data.crops_per_image) for seed in batch.seeds}
    for run in batch.runs:
        if batch.start_step:
            writers[run.name].log_text(f"resumed from step {batch.start_step} "
                                       f"(data position {batch.positions[run.config.seed]})")
        writers[run.name].log_text(datasets[run.config.seed].source_info.summary())
    return [datasets[seed].as_numpy_iterator() for seed in batch.seeds]


def _compile_programs(batch: _Batch, chunk: int, print_fn: Callable[[str], None]) -> None:
    """Compiles every setting's program at once (XLA compiles outside the GIL) and says so."""
    first, settings = batch.first, batch.settings
    patch = first.data.hr_patch_size
    shapes = (jax.ShapeDtypeStruct((len(batch.seeds), chunk, first.batch_size, patch, patch, 3), jnp.uint8),
              jax.ShapeDtypeStruct((len(batch.seeds), chunk, first.batch_size), jnp.int32))
    compile_start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, len(settings))) as pool:
        programs = list(pool.map(lambda s: _make_program(s.step_fn, s.seed_index).lower(s.states, *shapes).compile(),
                                 settings))
    for setting, program in zip(settings, programs):
        setting.program = program
    print_fn(f"{len(batch.runs)} runs in {len(settings)} settings, {len(batch.seeds)} seeds; {chunk} "
             f"step{'s' * (chunk != 1)} per compiled chunk; compiled in {time.perf_counter() - compile_start:.1f} s")


class _Validation:
    """Validation on the host, one thread per run (its validator is not shared), off the loop."""

    def __init__(self, batch: _Batch, val_images: Any, writers: dict[str, reporting.RunWriter]):
        self.settings, self.writers = batch.settings, writers
        self.executors = {run.name: concurrent.futures.ThreadPoolExecutor(1) for run in batch.runs}
        self.validators: dict[str, concurrent.futures.Future] = {}
        for setting in self.settings:
            for run in setting.runs:
                self.validators[run.name] = self.executors[run.name].submit(
                    evaluation.make_validator, run.config, setting.model, val_images)
        self.pending: list[tuple[str, int, concurrent.futures.Future]] = []
        self.last_scores: dict[str, dict[str, float]] = {}

    def submit(self, step: int) -> None:
        """Starts validating every run's current parameters as those of `step`."""
        for setting in self.settings:
            params = jax.device_get(eval_params(setting.states))
            for index, run in enumerate(setting.runs):
                member = _member(params, index)
                self.pending.append((run.name, step, self.executors[run.name].submit(
                    lambda name=run.name, member=member: self.validators[name].result()(member))))

    def log(self, wait: bool) -> None:
        """Writes the finished validations in order; with `wait`, all of them."""
        while self.pending and (wait or self.pending[0][2].done()):
            name, step, future = self.pending.pop(0)
            scores, strip = future.result()
            self.writers[name].log_eval(step, scores, strip)
            self.last_scores[name] = scores

    def shutdown(self) -> None:
        for executor in self.executors.values():
            executor.shutdown(wait=True, cancel_futures=True)


def _check_finite(settings: list[_Setting], fetched: list[dict[str, np.ndarray]], end: int, chunk: int) -> None:
    """Raises `NonFiniteLossError` on the first non-finite metric of the chunk ending at `end`."""
    for setting, values in zip(settings, fetched):
        for name, value in values.items():
            bad = ~np.isfinite(value)
            if bad.any():
                k, index = map(int, np.argwhere(bad)[0])
                raise NonFiniteLossError(f"{setting.runs[index].name}: step {end - chunk + k + 1}: "
                                         f"non-finite {name} ({value[k, index]}); lower learning_rate")


class _Progress:
    """Checks each chunk's metrics, writes the log steps' lines, and measures the steady speed
    (from the end of the first chunk, less the pauses to checkpoint and start validations)."""

    def __init__(self, batch: _Batch, chunk: int, writers: dict[str, reporting.RunWriter]):
        self.batch, self.chunk, self.writers = batch, chunk, writers
        self.checked_step = batch.start_step
        self.window_step, self.window_start = batch.start_step, time.perf_counter()
        self.steady_step: int | None = None
        self.steady_start: float | None = None
        self.paused = 0.0
        self.data_wait = 0.0  # host seconds spent reading crops in the current log window

    def check(self, item: tuple[int, list[Any]] | None) -> None:
        """Waits for a chunk's metrics; stops on a non-finite one; logs its log steps."""
        if item is None:
            return
        end, metrics = item
        fetched = jax.device_get(metrics)
        now = time.perf_counter()
        _check_finite(self.batch.settings, fetched, end, self.chunk)
        self.checked_step = end
        if self.steady_step is None:  # throughput counts from the end of the first chunk
            self.steady_step, self.steady_start = end, now
        self._log_steps(end, fetched, now)

    def _log_steps(self, end: int, fetched: list[dict[str, np.ndarray]], now: float) -> None:
        first = self.batch.first
        total_steps, batch_size = first.num_train_steps, first.batch_size
        for k in range(self.chunk):
            at = end - self.chunk + k + 1
            if at % first.log_every_steps and at != total_steps:
                continue
            rate = (at - self.window_step) * batch_size / max(now - self.window_start, 1e-9)
            eta = reporting.format_duration((total_steps - at) * batch_size / rate)
            for setting, values in zip(self.batch.settings, fetched):
                for index, run in enumerate(setting.runs):
                    logged = {name: float(value[k, index]) for name, value in values.items()}
                    logged["data_wait_ms"] = 1000.0 * self.data_wait / max(at - self.window_step, 1)
                    self.writers[run.name].log_train(at, total_steps, logged, rate, eta)
            self.window_step, self.window_start, self.data_wait = at, now, 0.0

    def resume_after(self, paused_from: float) -> None:
        """Ends a pause begun at `paused_from`: it counts neither in the speed nor the log window."""
        self.window_step, self.window_start = self.checked_step, time.perf_counter()
        self.paused += self.window_start - paused_from

    def over_budget(self, step: int, deadline: float | None) -> str | None:
        """Why to stop at `step`: the steady speed so far says the rest would end past the deadline."""
        total_steps = self.batch.first.num_train_steps
        if (deadline is None or self.steady_step is None or self.checked_step <= self.steady_step
                or step >= total_steps):
            return None
        seconds_per_step = ((time.perf_counter() - self.steady_start - self.paused)
                            / (self.checked_step - self.steady_step))
        left = (total_steps - step) * seconds_per_step
        if time.monotonic() + left <= deadline:
            return None
        return (f"at {1 / seconds_per_step:.2f} steps/s ({len(self.batch.runs)} runs), the {total_steps - step} "
                f"steps left need {reporting.format_duration(left)}, past the deadline")

    def steady_speed(self) -> tuple[float, int]:
        """(seconds of steady training, crops per run trained in them)."""
        if self.steady_step is None:
            return 0.0, 0
        return (time.perf_counter() - self.steady_start - self.paused,
                (self.checked_step - self.steady_step) * self.batch.first.batch_size)


def _checkpoint_and_evaluate(batch: _Batch, step: int, checkpoint_now: bool, evaluate_now: bool,
                             progress: _Progress, validation: _Validation, print_fn: Callable[[str], None]) -> None:
    """At a checkpoint or evaluation step (metrics checked): saves, starts validations, prints losses."""
    paused_from = time.perf_counter()
    if checkpoint_now:
        batch.save(step)
    if evaluate_now:
        validation.submit(step)
        losses = ", ".join(f"{run.name} {float(total):.4f}" for setting in batch.settings
                           for run, total in zip(setting.runs, setting.metrics["total"][-1]))
        print_fn(f"step {step}/{batch.first.num_train_steps} | "
                 f"{reporting.format_duration(time.perf_counter() - batch.start_time)} | loss {losses}")
    progress.resume_after(paused_from)


def _run_chunk(batch: _Batch, next_chunk: tuple[np.ndarray, np.ndarray, list[int]]) -> list[Any]:
    """Dispatches one chunk of every setting's program; returns their (not yet fetched) metrics."""
    hr, transforms, next_positions = next_chunk
    hr, transforms = jax.device_put(hr, batch.device), jax.device_put(transforms, batch.device)
    for setting in batch.settings:
        setting.states, setting.metrics = setting.program(setting.states, hr, transforms)
    batch.positions.update(zip(batch.seeds, next_positions))
    return [setting.metrics for setting in batch.settings]


def _train(batch: _Batch, streams: list[Iterator[dict[str, np.ndarray]]], chunk: int, progress: _Progress,
           validation: _Validation, deadline: float | None, print_fn: Callable[[str], None]) -> int:
    """Steps every setting chunk by chunk to the last step (or `OverBudgetError`); returns the step."""
    first = batch.first
    total_steps = first.num_train_steps
    step = batch.start_step
    pending: tuple[int, list[Any]] | None = None
    next_chunk = _read_chunk(streams, chunk) if step < total_steps else None
    while step < total_steps:
        metrics = _run_chunk(batch, next_chunk)
        step += chunk
        current = (step, metrics)
        if step < total_steps:  # the host reads the next crops while the device computes
            read_start = time.perf_counter()
            next_chunk = _read_chunk(streams, chunk)
            progress.data_wait += time.perf_counter() - read_start
        progress.check(pending)  # the chunk before: its metrics are ready, or nearly
        pending = current
        validation.log(wait=False)
        checkpoint_now = step % first.checkpoint_every_steps == 0
        evaluate_now = step % first.eval_every_steps == 0
        if checkpoint_now or evaluate_now:
            progress.check(pending)  # never save or evaluate a state whose metrics are unchecked
            pending = None
            _checkpoint_and_evaluate(batch, step, checkpoint_now, evaluate_now, progress, validation, print_fn)
        reason = progress.over_budget(step, deadline)
        if reason:  # stop now, resumable, rather than be cut off half-way
            progress.check(pending)
            pending = None
            if not checkpoint_now:
                batch.save(step)
            validation.log(wait=True)
            raise OverBudgetError(f"{reason}: stopped at step {step}, checkpoints kept; "
                                  "rerun with more time to resume")
    progress.check(pending)
    if step > batch.start_step and step % first.checkpoint_every_steps:
        batch.save(step)
    return step


def _write_summaries(batch: _Batch, step: int, chunk: int, last_scores: dict[str, dict[str, float]],
                     files: _RunFiles, train_seconds: float, steady_crops: int) -> dict[str, dict[str, Any]]:
    """Writes each run's summary.json and closes its files; returns ``{run name: summary}``."""
    summaries = {}
    for setting in batch.settings:
        for index, run in enumerate(setting.runs):
            summary = {
                "step": step,
                **{f"val_{name}": value for name, value in last_scores.get(run.name, {}).items()},
                "images_per_second": steady_crops / train_seconds if steady_crops else None,
                "train_seconds": train_seconds,
                "wall_seconds": time.perf_counter() - batch.start_time,
                "num_devices": 1,
                "num_processes": 1,
                "parameters": models.count_params(_member(setting.states.params, index)),
                "lockstep": {"runs": len(batch.runs), "settings": len(batch.settings), "chunk_steps": chunk},
            }
            files.writers[run.name].write_summary(summary)
            files.close(run.name)
            summaries[run.name] = summary
    return summaries


def train_in_lockstep(runs: Sequence[LockstepRun], *, deadline: float | None = None,
                      print_fn: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Trains every run of `runs` in lockstep (see the module docstring); returns the summaries.

    Args:
      runs: the runs; their configs must agree on `SHARED_FIELDS`. Runs whose configs differ
        only in ``seed`` share a compiled program.
      deadline: a `time.monotonic` time by which training must be done: once the speed is
        measured, a batch that would end later stops with `OverBudgetError` (the runs keep
        their last checkpoints) rather than run out of time half-way.
      print_fn: where the batch's progress lines go (one per evaluation step); each run's own
        log lines (what `train_and_evaluate` prints) go to ``<workdir>/log.txt``.

    Returns:
      ``{run name: summary}``, each summary as `train_and_evaluate` writes it plus
      ``lockstep`` (how many runs and settings trained together, the chunk length).

    Raises:
      ConfigError, ValueError: configs that cannot train together, before anything compiles.
      NonFiniteLossError: a loss term went NaN or inf (named by run and step).
      OverBudgetError: see `deadline`.
    """
    start_time = time.perf_counter()
    _check_runs(runs)
    first = runs[0].config
    seeds = sorted({run.config.seed for run in runs})
    device = jax.local_devices()[0]
    mesh = training.make_mesh([device])

    train_source = data.parse_source(first.data.train, tfds_data_dir=first.data.tfds_data_dir)
    val_images = data.load_images(first.data.val, limit=first.data.val_limit or None,
                                  tfds_data_dir=first.data.tfds_data_dir)
    if not val_images:
        raise ConfigError(f"data.val={first.data.val!r} holds no readable images")

    settings, checkpointers, restored = _build_settings(runs, seeds, device, mesh)
    start_step, positions = _common_start(runs, restored)
    batch = _Batch(runs, first, seeds, device, settings, checkpointers, start_step, positions, start_time)
    files = _RunFiles(runs)
    streams = _open_streams(batch, train_source, files.writers)
    chunk = chunk_steps(first, start_step, len(seeds))
    _compile_programs(batch, chunk, print_fn)
    validation = _Validation(batch, val_images, files.writers)
    progress = _Progress(batch, chunk, files.writers)

    try:
        try:
            step = _train(batch, streams, chunk, progress, validation, deadline, print_fn)
        finally:
            for checkpointer in checkpointers.values():
                checkpointer.close()
        train_seconds, steady_crops = progress.steady_speed()
        if step % first.eval_every_steps or step == start_step:
            validation.submit(step)
        validation.log(wait=True)
    except BaseException:
        files.close_all()
        raise
    finally:
        validation.shutdown()
    return _write_summaries(batch, step, chunk, validation.last_scores, files, train_seconds, steady_crops)
