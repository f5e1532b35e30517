"""The training loop: data-parallel DRN training with the objective of Eq. 7.

Layout follows flax/examples/imagenet: `create_train_state`, `make_train_step` and
`train_and_evaluate(config, workdir)`; `train.py` at the top level only parses flags.

Data parallelism has pmap semantics on the supported API: the step is a
`jax.shard_map` over a 1-D ``data`` mesh of every device (all processes), each device
computes the loss on its shard of the global batch, and gradients and metrics are
averaged with `lax.pmean`. Global batches are assembled from each process's local
crops with `jax.make_array_from_process_local_data`, so the same code runs on one
CPU, eight emulated devices, or a multi-host pod slice.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import math
import os
import pathlib
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from drn_jax import checkpointing, data, evaluation, losses, models, reporting, warm_start
from drn_jax import config as config_lib
from drn_jax.errors import ConfigError, NonFiniteLossError
from drn_jax.model_factory import create_model
from drn_jax.ops.dihedral import dihedral
from drn_jax.loop import StepChecker, StopSignal, Throughput, saved_on_exit
from drn_jax.resize import imresize
from drn_jax.rundir import RunDir
from drn_jax.train_state import TrainState, create_optimizer, create_train_state, eval_params, learning_rate_schedule

logger = logging.getLogger(__name__)

DATA_AXIS = "data"


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------

def lr_pyramid(hr: jax.Array, scale: int) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """LR input and the per-level targets y_1..y_S of Eq. 7 from an HR batch.

    Args:
      hr: (B, H, W, 3) float in [0, 1], H and W divisible by `scale`.
      scale: 2, 4 or 8.

    Returns:
      (lr, targets): lr is (B, H/scale, W/scale, 3); targets are coarse to fine, level i
      at H * 2^i / scale, the last being `hr` itself. Every downscaled image goes through
      the project's MATLAB bicubic and is rounded to 8 bits, like a saved LR file.
    """
    num_levels = int(math.log2(scale))
    lr = imresize(hr, 1 / scale, quantize=True)
    targets = tuple(imresize(hr, 2 ** level / scale, quantize=True) for level in range(1, num_levels))
    return lr, (*targets, hr)


def _level_targets(config: ml_collections.ConfigDict, lr: jax.Array, pyramid: Sequence[jax.Array],
                   primal: Sequence[jax.Array]) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """(primal targets, dual targets) matching the model's outputs, coarse to fine."""
    if not config.model.progressive:
        # Plain / dual-only ablations: the final image alone, its dual maps back to LR.
        return (pyramid[-1],), (lr,)
    if config.loss.dual_target == "prediction":
        previous = tuple(jax.lax.stop_gradient(image) for image in primal[:-1])
    else:
        previous = tuple(pyramid[:-1])
    return tuple(pyramid), (lr, *previous)


def loss_hyperparameters(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The ``config.loss`` values of the hyper-parameters that the chosen loss declares."""
    return {name: config.loss[name] for name in losses.LOSSES[config.loss.name].hyperparameters}


def make_loss_fn(config: ml_collections.ConfigDict, model: models.DRN
                 ) -> Callable[[Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
    """loss_fn(params, hr_uint8) -> (total, terms) for one (per-device) batch."""

    def loss_fn(params, hr_uint8):
        hr = hr_uint8.astype(jnp.float32) / 255.0
        lr, pyramid = lr_pyramid(hr, config.scale)
        outputs = model.apply({"params": params}, lr)
        primal_targets, dual_targets = _level_targets(config, lr, pyramid, outputs.primal)
        return losses.drn_objective(
            outputs.primal, primal_targets,
            outputs.dual, dual_targets if outputs.dual is not None else None,
            loss=config.loss.name, dual_weight=config.loss.dual_weight, **loss_hyperparameters(config))

    return loss_fn


def make_train_step(config: ml_collections.ConfigDict, model: models.DRN,
                    optimizer: optax.GradientTransformation, mesh: Mesh
                    ) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted, data-parallel step: (state, hr_uint8 global batch) -> (state, metrics).

    `state` is replicated and donated; the batch is sharded over `mesh`'s data axis.
    """
    loss_fn = make_loss_fn(config, model)
    schedule = learning_rate_schedule(config)

    def ema_decay(step: jax.Array) -> jax.Array:
        # The EMA starts at the initial parameters; a full decay from the first step would keep
        # 0.999**n of that random start in it (a fifth after 1,500 steps at 0.999). A decay that
        # grows as (1 + n) / (10 + n) up to ema_decay forgets the start within tens of steps.
        return jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))

    def global_loss(params, hr_uint8):
        # The objective is the mean over the global batch: every device holds an equal
        # shard, so it is the mean of the per-device means. Differentiating through
        # `pmean` gives each device the averaged gradient of the replicated parameters
        # (shard_map psums the cotangent of a replicated input), i.e. pmap semantics.
        # That psum sits where the parameters first meet the data: cast to vary over the data
        # axis here, in their own float32, the gradients are summed in float32. Left to the
        # model, the cast would come after its bfloat16 cast, and with model.dtype bfloat16
        # the devices' gradients would be summed in bfloat16 (on TPU; CPUs upcast it). A
        # float32 model's gradients are float32 already: its program stays as it was.
        if config.model.dtype != "float32":
            params = jax.tree.map(lambda leaf: jax.lax.pcast(leaf, DATA_AXIS, to="varying"), params)
        total, terms = loss_fn(params, hr_uint8)
        return jax.lax.pmean((total, terms), DATA_AXIS)

    def per_device_step(state: TrainState, hr_uint8: jax.Array):
        (total, terms), grads = jax.value_and_grad(global_loss, has_aux=True)(state.params, hr_uint8)
        terms = dict(terms, total=total)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_params is not None:
            ema_params = optax.incremental_update(params, ema_params, 1.0 - ema_decay(state.step))
        metrics = dict(terms, learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads))
        return TrainState(state.step + 1, params, opt_state, ema_params), metrics

    step = jax.shard_map(
        per_device_step, mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS)),
        out_specs=(PartitionSpec(), PartitionSpec()),
    )
    return jax.jit(step, donate_argnums=(0,))


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles the global (B, ...) batch array from this process's (B / processes, ...) part."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec(DATA_AXIS)), local)


def prefetch_to_mesh(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh, depth: int = 2
                     ) -> Iterator[tuple[dict[str, np.ndarray], jax.Array, float]]:
    """Yields (local batch, its global sharded ``hr`` array, seconds waited for it), keeping
    ``depth`` batches already handed to the devices.

    The transfer (`global_batch`, asynchronous) of the next batches then runs while the
    current step computes, and the step never waits for a copy. A batch's ``transform``
    (the streams' dihedral transforms, drawn on the host) is applied there, on the devices
    (`ops.dihedral`); a batch without one is used as it is. The seconds are the time spent
    blocked on ``batches`` (the host's input stream) when topping the queue up: time the
    loop waited for data rather than for the devices.
    """
    queue: collections.deque = collections.deque()
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    augment = jax.jit(dihedral, out_shardings=sharding)

    def top_up() -> bool:
        start = time.perf_counter()
        try:
            local = next(batches)
        except StopIteration:
            return False
        waited = time.perf_counter() - start
        hr = global_batch(local["hr"], mesh)
        if "transform" in local:
            hr = augment(hr, global_batch(local["transform"], mesh))
        queue.append((local, hr, waited))
        return True

    for _ in range(depth):
        top_up()
    while queue:
        item = queue.popleft()
        top_up()  # before the step that uses ``item`` is dispatched: its copy overlaps the last one
        yield item


# ---------------------------------------------------------------------------
# Several processes
# ---------------------------------------------------------------------------

def initialize_distributed() -> None:
    """`jax.distributed.initialize`, from the environment where the cluster is not detected.

    On a TPU pod slice, SLURM, Open MPI and Kubernetes JAX finds the coordinator, the
    process count and this process's id itself. Elsewhere (several GPU hosts, or several
    processes on one machine) set ``JAX_COORDINATOR_ADDRESS=host:port``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` on every process. On CPU the
    cross-process collectives are gloo over TCP, JAX's default.
    """
    if jax.distributed.is_initialized():
        return
    kwargs: dict[str, Any] = {}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r} is not an integer") from None
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise ConfigError(
            f"distributed=True: cannot start JAX's distributed runtime ({reason}); on a TPU pod "
            "slice, SLURM or Open MPI it is found automatically, elsewhere set "
            "JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every "
            "process") from None


def make_flag_reducer(mesh: Mesh) -> Callable[[int], jax.Array]:
    """any_flag(local int) -> the maximum over all processes, as a replicated scalar.

    Dispatched asynchronously like a step, and read one step late with its metrics, so
    every process learns of a signal another received at the same step, without an extra
    host synchronisation.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    reduce_max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))
    local_devices = sum(device.process_index == jax.process_index() for device in mesh.devices.flat)

    def any_flag(value: int) -> jax.Array:
        local = np.full((local_devices,), value, np.int32)
        return reduce_max(jax.make_array_from_process_local_data(sharding, local))

    return any_flag


def gather_positions(position: int) -> list[int]:
    """Every process's data position, indexed by process (a collective on several processes)."""
    if jax.process_count() == 1:
        return [int(position)]
    gathered = multihost_utils.process_allgather(np.asarray(position, np.int64))
    return [int(p) for p in np.asarray(gathered).reshape(-1)]


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
              if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

# Errors writing into the workdir that Python reports without a file name.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the summary.

    Writes `config.json`, `metrics.jsonl`, TensorBoard events, `checkpoints/` and at the
    end `summary.json` into `workdir` (process 0 only writes logs and summaries).

    Raises one-line errors for what a user can fix: `config_lib.ConfigError` and
    `ValueError` for bad settings and data (before anything compiles), `OSError` naming the
    folder for an unwritable or full workdir (saved checkpoints are kept), and
    `NonFiniteLossError` naming the step and the loss terms.
    """
    try:
        return _train_and_evaluate(config, workdir)
    except OSError as err:
        if err.errno in _DISK_ERRNOS and err.filename is None:
            # e.g. a log line appended to a full disk: "[Errno 28] No space left on device".
            raise OSError(f"{pathlib.Path(workdir).absolute()}: cannot write the run's files ({err.strerror}); "
                          "saved checkpoints are kept; free some space or choose a writable --workdir") from None
        raise


@dataclasses.dataclass
class _Run:
    """What the loop works with, set up before anything compiles or trains."""

    config: ml_collections.ConfigDict
    state: TrainState
    start_step: int
    data_position: int
    batches: Iterator[tuple[dict[str, np.ndarray], jax.Array, float]]
    train_step: Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
    checkpointer: checkpointing.Checkpointer
    writer: reporting.RunWriter
    validate: Callable[[Any], tuple[dict[str, float], Any]] | None
    any_flag: Callable[[int], jax.Array] | None

    def validation(self, step: int, params: Any) -> dict[str, float]:
        if self.validate is None:  # process 0 alone validates: it alone logs
            return {}
        scores, strip = self.validate(jax.device_get(params))
        self.writer.log_eval(step, scores, strip)
        return scores

    def save(self, step: int, state: TrainState, position: int) -> None:
        positions = gather_positions(position)  # on every process, at the same steps
        if not bool(_all_finite((state.params, state.opt_state, state.ema_params))):
            raise NonFiniteLossError(f"step {step}: the parameters or the optimiser state are not finite")
        self.checkpointer.save(step, state, positions)


def _set_up(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> _Run:
    """Checks the inputs (before compiling), restores or creates the state, opens the data."""
    run = RunDir(workdir)
    num_devices, num_processes = jax.device_count(), jax.process_count()
    config_lib.validate(config, num_devices=num_devices, num_processes=num_processes)
    train_source = data.parse_source(config.data.train, tfds_data_dir=config.data.tfds_data_dir)
    val_images = data.load_images(config.data.val, limit=config.data.val_limit or None,
                                  tfds_data_dir=config.data.tfds_data_dir)
    if not val_images:
        raise ConfigError(f"data.val={config.data.val!r} holds no readable images")

    model = create_model(config)
    optimizer = create_optimizer(config)
    mesh = make_mesh()
    checkpointer = checkpointing.Checkpointer(run.checkpoints, keep=config.keep_checkpoints)
    # A setup error closes the manager first: its background work would print tracebacks at exit.
    try:
        if checkpointer.latest_step() is not None:
            # A checkpoint of another model is refused before restoring, compiling or writing.
            checkpointing.check_compatible(run, config)
        local_batch = config.batch_size // num_processes
        # A warm start (config.init_from) gives the first step's parameters; a checkpoint wins over it.
        init_params = (warm_start.initial_params(config, model)
                       if config.init_from and checkpointer.latest_step() is None else None)
        # Restored straight into the replicated layout: every process reads the same state.
        state = replicate(create_train_state(config, model, optimizer, jax.random.key(config.seed),
                                             init_params), mesh)
        state, data_position = checkpointer.restore_or(state)
        start_step = int(state.step)

        is_lead = jax.process_index() == 0
        writer = reporting.RunWriter(run, config, enabled=is_lead)
        if data_position is None:
            # Saved by another number of processes: each process's stream is another one now.
            data_position = start_step * local_batch
            writer.log_text(f"warning: the checkpoint of step {start_step} was written by another number "
                            f"of processes; the data streams restart at position {data_position}, so this "
                            "run will not match an uninterrupted one exactly")
        if start_step:
            writer.log_text(f"resumed from step {start_step} (data position {data_position})")
        if start_step >= config.num_train_steps:
            writer.log_text(f"already trained for {start_step} >= num_train_steps={config.num_train_steps} steps")

        dataset = data.create_train_dataset(
            train_source, patch_size=config.data.hr_patch_size, batch_size=local_batch, seed=config.seed,
            shuffle_buffer=config.data.shuffle_buffer, start_position=data_position,
            process_index=jax.process_index(), process_count=num_processes,
            crops_per_image=config.data.crops_per_image)
        writer.log_text(dataset.source_info.summary())
        return _Run(
            config=config, state=state, start_step=start_step, data_position=data_position,
            # Two batches ahead on the devices: input and compute overlap.
            batches=prefetch_to_mesh(dataset.as_numpy_iterator(), mesh, depth=2),
            train_step=make_train_step(config, model, optimizer, mesh), checkpointer=checkpointer,
            writer=writer, validate=evaluation.make_validator(config, model, val_images) if is_lead else None,
            any_flag=make_flag_reducer(mesh) if num_processes > 1 else None)
    except BaseException:
        checkpointer.close()
        raise


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    if config.distributed:
        initialize_distributed()
    run_start = time.perf_counter()
    run = _set_up(config, workdir)
    state, step, position, last_scores = run.state, run.start_step, run.data_position, {}
    meter = Throughput(step, batch_size=config.batch_size, total_steps=config.num_train_steps)
    checker = StepChecker(step, meter, log_every=config.log_every_steps, total_steps=config.num_train_steps,
                          log=lambda *line: run.writer.log_train(line[0], config.num_train_steps, *line[1:]))

    def stopped_by() -> str | None:
        # One process stops at once; several stop at the step where all learn of the signal.
        return stop.received if run.any_flag is None else checker.agreed_stop

    with StopSignal() as stop, saved_on_exit(
            run.checkpointer, save=lambda: run.save(step, state, position),
            should_save=lambda: step == checker.checked_step > run.start_step and not run.checkpointer.has(step),
            on_non_finite=run.writer.close):
        while step < config.num_train_steps and stopped_by() is None:
            local, hr, waited = next(run.batches)
            meter.waited(waited)
            state, metrics = run.train_step(state, hr)
            checker.check()  # overlaps the host sync with the step just dispatched
            step, position = step + 1, int(local["position"].max()) + 1
            flag = run.any_flag(signal.Signals[stop.received].value if stop.received else 0) \
                if run.any_flag is not None else None
            checker.push(step, metrics, flag)
            if step % config.checkpoint_every_steps == 0 or step % config.eval_every_steps == 0:
                checker.check()  # never save or evaluate a state that has not been checked
                with meter.paused(checker.checked_step):  # saving and validating are not training
                    if step % config.checkpoint_every_steps == 0:
                        run.save(step, state, position)
                    if step % config.eval_every_steps == 0:
                        last_scores = run.validation(step, eval_params(state))
        checker.check()

    if stopped_by() is not None:
        run.writer.log_text(f"{stopped_by()}: saved step {step}; rerun the same command to resume")
        run.writer.close()
        return {"step": step, "stopped_by": stopped_by()}
    return _finish(run, state, step, last_scores, meter, checker.checked_step, run_start)


def _finish(run: _Run, state: TrainState, step: int, last_scores: dict[str, float], meter: Throughput,
            checked_step: int, run_start: float) -> dict[str, Any]:
    """Validates the final state (unless its step just was) and writes ``summary.json``."""
    images_per_second, train_seconds = meter.summary(checked_step)
    if not last_scores or step % run.config.eval_every_steps:
        last_scores = run.validation(step, eval_params(state))
    summary = {
        "step": step,
        **{f"val_{name}": value for name, value in last_scores.items()},
        # Steady state: from the end of the first step (compilation) to the last.
        "images_per_second": images_per_second,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - run_start,
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "parameters": models.count_params(state.params),
    }
    run.writer.write_summary(summary)
    run.writer.close()
    return summary
