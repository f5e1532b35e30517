"""Several training runs in lockstep in one process: a setting's seeds in one compiled program.

On an accelerator a small DRN is launch-bound: one run's step is a few hundred small kernels,
and one step at a time leaves the device idle between them and the host's dispatches.
:func:`train_in_lockstep` trains many runs together instead:

* Runs whose configs differ only in ``seed`` form a *setting*. Their training states are stacked
  along a leading axis, and one compiled program steps them all: `jax.vmap` of
  `drn_jax.training.make_train_step` (the step `train_and_evaluate` runs, here on a mesh of
  one device) inside a `jax.lax.scan` over a chunk of steps, so the device runs a whole chunk
  without waiting for the host.
* Each setting (another loss, another model) has a program of its own; every chunk dispatches
  them one after another. They are compiled concurrently, before the first step.
* One data stream per seed, drawn as `train_and_evaluate` draws it, feeds every run with that
  seed: runs of different settings and the same seed see the same crops, in the same order.

A run trained here equals the same config trained alone by `train_and_evaluate`, to float
rounding (tests/test_device_comparisons.py checks it), and its folder holds the same files
(``config.json``, ``metrics.jsonl``, ``tensorboard/``, ``checkpoints/``, ``summary.json``), so
eval.py and the comparison reports read it alike. Checkpoints are written every
``checkpoint_every_steps``; a rerun resumes every run from its latest one, which must be the
same step for all. One process, one device (the first local one).
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
    total_steps, batch_size = first.num_train_steps, first.batch_size
    seeds = sorted({run.config.seed for run in runs})
    device = jax.local_devices()[0]
    mesh = training.make_mesh([device])

    train_source = data.parse_source(first.data.train, tfds_data_dir=first.data.tfds_data_dir)
    val_images = data.load_images(first.data.val, limit=first.data.val_limit or None,
                                  tfds_data_dir=first.data.tfds_data_dir)
    if not val_images:
        raise ConfigError(f"data.val={first.data.val!r} holds no readable images")

    # Settings, their initial or restored states, and each run's writer and checkpointer.
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
            checkpointer = checkpointing.Checkpointer(RunDir(run.workdir).checkpoints, keep=run.config.keep_checkpoints)
            checkpointers[run.name] = checkpointer
            if checkpointer.latest_step() is not None:
                checkpointing.check_compatible(RunDir(run.workdir), run.config)
            state = jax.device_put(create_train_state(run.config, model, optimizer, jax.random.key(run.config.seed)),
                                   device)
            state, position = checkpointer.restore_or(state)
            if position is None:
                raise ValueError(f"{run.name}: its checkpoint was written by several processes; "
                                 "lockstep runs resume only one-process checkpoints")
            restored[run.name] = (int(state.step), position)
            states.append(state)
        settings.append(_Setting(members, tuple(seeds.index(run.config.seed) for run in members), model,
                                 training.make_train_step(config, model, optimizer, mesh), _stack(states)))
    start_steps = {step for step, _ in restored.values()}
    if len(start_steps) != 1:
        raise ValueError("the runs' latest checkpoints are at different steps ("
                         + ", ".join(f"{name} {step}" for name, (step, _) in restored.items())
                         + "); lockstep runs resume together: remove the odd ones' folders")
    start_step = start_steps.pop()
    positions = {}
    for run in runs:
        position = positions.setdefault(run.config.seed, restored[run.name][1])
        if position != restored[run.name][1]:
            raise ValueError(f"{run.name}: its data position {restored[run.name][1]} differs from another "
                             f"run of seed {run.config.seed} at {position}; remove the odd folders")

    # Each run's own console lines (what train_and_evaluate prints) go to its log.txt.
    for run in runs:
        run.workdir.mkdir(parents=True, exist_ok=True)
    logs = {run.name: open(RunDir(run.workdir).path / "log.txt", "a", buffering=1) for run in runs}
    writers = {run.name: reporting.RunWriter(RunDir(run.workdir), run.config,
                                             echo=lambda line, log=logs[run.name]: log.write(line + "\n"))
               for run in runs}

    datasets = {seed: data.create_train_dataset(
        train_source, patch_size=first.data.hr_patch_size, batch_size=batch_size, seed=seed,
        shuffle_buffer=first.data.shuffle_buffer, start_position=positions[seed], process_index=0,
        process_count=1, crops_per_image=first.data.crops_per_image) for seed in seeds}
    for run in runs:
        if start_step:
            writers[run.name].log_text(f"resumed from step {start_step} (data position {positions[run.config.seed]})")
        writers[run.name].log_text(datasets[run.config.seed].source_info.summary())
    streams = [datasets[seed].as_numpy_iterator() for seed in seeds]
    chunk = chunk_steps(first, start_step, len(seeds))

    # Compile every setting's program at once: XLA compiles outside the GIL.
    shapes = (jax.ShapeDtypeStruct((len(seeds), chunk, batch_size, first.data.hr_patch_size,
                                    first.data.hr_patch_size, 3), jnp.uint8),
              jax.ShapeDtypeStruct((len(seeds), chunk, batch_size), jnp.int32))
    compile_start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, len(settings))) as pool:
        programs = list(pool.map(lambda s: _make_program(s.step_fn, s.seed_index).lower(s.states, *shapes).compile(),
                                 settings))
    for setting, program in zip(settings, programs):
        setting.program = program
    print_fn(f"{len(runs)} runs in {len(settings)} settings, {len(seeds)} seeds; {chunk} step{'s' * (chunk != 1)} "
             f"per compiled chunk; compiled in {time.perf_counter() - compile_start:.1f} s")

    # Validation on the host, one thread per run (its validator is not shared), off the loop.
    validators: dict[str, concurrent.futures.Future] = {}
    executors = {run.name: concurrent.futures.ThreadPoolExecutor(1) for run in runs}
    for setting in settings:
        for run in setting.runs:
            validators[run.name] = executors[run.name].submit(evaluation.make_validator, run.config,
                                                              setting.model, val_images)
    pending_evals: list[tuple[str, int, concurrent.futures.Future]] = []
    last_scores: dict[str, dict[str, float]] = {}

    def validate_later(step: int) -> None:
        for setting in settings:
            params = jax.device_get(eval_params(setting.states))
            for index, run in enumerate(setting.runs):
                member = _member(params, index)
                pending_evals.append((run.name, step, executors[run.name].submit(
                    lambda name=run.name, member=member: validators[name].result()(member))))

    def log_evaluations(wait: bool) -> None:
        while pending_evals and (wait or pending_evals[0][2].done()):
            name, step, future = pending_evals.pop(0)
            scores, strip = future.result()
            writers[name].log_eval(step, scores, strip)
            last_scores[name] = scores

    def save(step: int) -> None:
        for setting in settings:
            for index, run in enumerate(setting.runs):
                checkpointers[run.name].save(step, _member(setting.states, index), [positions[run.config.seed]])

    step, checked_step = start_step, start_step
    pending: tuple[int, list[Any]] | None = None
    window_step, window_start = start_step, time.perf_counter()
    steady_step, steady_start, paused = None, None, 0.0
    data_wait = 0.0

    def check(item: tuple[int, list[Any]] | None) -> None:
        """Waits for a chunk's metrics; stops on a non-finite one; logs its log steps."""
        nonlocal checked_step, window_step, window_start, steady_step, steady_start, data_wait
        if item is None:
            return
        end, metrics = item
        fetched = jax.device_get(metrics)
        now = time.perf_counter()
        for setting, values in zip(settings, fetched):
            for name, value in values.items():
                bad = ~np.isfinite(value)
                if bad.any():
                    k, index = map(int, np.argwhere(bad)[0])
                    raise NonFiniteLossError(f"{setting.runs[index].name}: step {end - chunk + k + 1}: "
                                             f"non-finite {name} ({value[k, index]}); lower learning_rate")
        checked_step = end
        if steady_step is None:  # throughput counts from the end of the first chunk
            steady_step, steady_start = end, now
        for k in range(chunk):
            at = end - chunk + k + 1
            if at % first.log_every_steps and at != total_steps:
                continue
            rate = (at - window_step) * batch_size / max(now - window_start, 1e-9)
            eta = reporting.format_duration((total_steps - at) * batch_size / rate)
            for setting, values in zip(settings, fetched):
                for index, run in enumerate(setting.runs):
                    logged = {name: float(value[k, index]) for name, value in values.items()}
                    logged["data_wait_ms"] = 1000.0 * data_wait / max(at - window_step, 1)
                    writers[run.name].log_train(at, total_steps, logged, rate, eta)
            window_step, window_start, data_wait = at, now, 0.0

    def over_budget() -> str | None:
        """Why to stop at `step`: the steady speed so far says the rest would end past the deadline."""
        if deadline is None or steady_step is None or checked_step <= steady_step or step >= total_steps:
            return None
        seconds_per_step = (time.perf_counter() - steady_start - paused) / (checked_step - steady_step)
        left = (total_steps - step) * seconds_per_step
        if time.monotonic() + left <= deadline:
            return None
        return (f"at {1 / seconds_per_step:.2f} steps/s ({len(runs)} runs), the {total_steps - step} "
                f"steps left need {reporting.format_duration(left)}, past the deadline")

    try:
        try:
            next_chunk = _read_chunk(streams, chunk) if step < total_steps else None
            while step < total_steps:
                hr, transforms, next_positions = next_chunk
                hr, transforms = jax.device_put(hr, device), jax.device_put(transforms, device)
                for setting in settings:
                    setting.states, setting.metrics = setting.program(setting.states, hr, transforms)
                step += chunk
                positions.update(zip(seeds, next_positions))
                current = (step, [setting.metrics for setting in settings])
                if step < total_steps:  # the host reads the next crops while the device computes
                    read_start = time.perf_counter()
                    next_chunk = _read_chunk(streams, chunk)
                    data_wait += time.perf_counter() - read_start
                check(pending)  # the chunk before: its metrics are ready, or nearly
                pending = current
                log_evaluations(wait=False)
                checkpoint_now = step % first.checkpoint_every_steps == 0
                evaluate_now = step % first.eval_every_steps == 0
                if checkpoint_now or evaluate_now:
                    check(pending)  # never save or evaluate a state whose metrics are unchecked
                    pending = None
                    paused_from = time.perf_counter()
                    if checkpoint_now:
                        save(step)
                    if evaluate_now:
                        validate_later(step)
                        losses = ", ".join(f"{run.name} {float(total):.4f}" for setting in settings
                                           for run, total in zip(setting.runs, setting.metrics["total"][-1]))
                        print_fn(f"step {step}/{total_steps} | {reporting.format_duration(time.perf_counter() - start_time)}"
                                 f" | loss {losses}")
                    window_step, window_start = checked_step, time.perf_counter()
                    paused += window_start - paused_from
                reason = over_budget()
                if reason:  # stop now, resumable, rather than be cut off half-way
                    check(pending)
                    pending = None
                    if not checkpoint_now:
                        save(step)
                    log_evaluations(wait=True)
                    raise OverBudgetError(f"{reason}: stopped at step {step}, checkpoints kept; "
                                          "rerun with more time to resume")
            check(pending)
            if step > start_step and step % first.checkpoint_every_steps:
                save(step)
        finally:
            for checkpointer in checkpointers.values():
                checkpointer.close()
        train_seconds = (time.perf_counter() - steady_start - paused) if steady_start is not None else 0.0
        steady_crops = (checked_step - steady_step) * batch_size if steady_step is not None else 0
        if step % first.eval_every_steps or step == start_step:
            validate_later(step)
        log_evaluations(wait=True)
    except BaseException:
        for name in writers:
            writers[name].close()
            logs[name].close()
        raise
    finally:
        for executor in executors.values():
            executor.shutdown(wait=True, cancel_futures=True)

    summaries = {}
    for setting in settings:
        for index, run in enumerate(setting.runs):
            summary = {
                "step": step,
                **{f"val_{name}": value for name, value in last_scores.get(run.name, {}).items()},
                "images_per_second": steady_crops / train_seconds if steady_crops else None,
                "train_seconds": train_seconds,
                "wall_seconds": time.perf_counter() - start_time,
                "num_devices": 1,
                "num_processes": 1,
                "parameters": models.count_params(_member(setting.states.params, index)),
                "lockstep": {"runs": len(runs), "settings": len(settings), "chunk_steps": chunk},
            }
            writers[run.name].write_summary(summary)
            writers[run.name].close()
            logs[run.name].close()
            summaries[run.name] = summary
    return summaries
