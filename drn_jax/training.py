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
import errno
import logging
import math
import os
import pathlib
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from drn_jax.reporting import format_duration
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

class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (save, then exit)."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. under some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_finite(step: int, metrics: Mapping[str, float]) -> None:
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteLossError(
            f"step {step}: non-finite {', '.join(bad)} ({', '.join(f'{n}={metrics[n]}' for n in bad)})")


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


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    if config.distributed:
        initialize_distributed()
    run_start = time.perf_counter()
    run = RunDir(workdir)
    is_lead = jax.process_index() == 0
    num_devices, num_processes = jax.device_count(), jax.process_count()

    # Everything that can be wrong with the inputs is reported before compiling.
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
    if checkpointer.latest_step() is not None:
        # A checkpoint of another model is refused before restoring, compiling or writing.
        checkpointing.check_compatible(run, config)
    local_batch = config.batch_size // num_processes
    # Restored straight into the replicated layout: every process reads the same state.
    # A warm start (config.init_from) gives the first step's parameters; a checkpoint wins over it.
    init_params = (warm_start.initial_params(config, model)
                   if config.init_from and checkpointer.latest_step() is None else None)
    state = replicate(create_train_state(config, model, optimizer, jax.random.key(config.seed),
                                         init_params), mesh)
    state, data_position = checkpointer.restore_or(state)
    start_step = int(state.step)

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
    # Two batches ahead on the devices: input and compute overlap.
    batches = prefetch_to_mesh(dataset.as_numpy_iterator(), mesh, depth=2)
    train_step = make_train_step(config, model, optimizer, mesh)
    # Validation runs on process 0 only: it alone logs, and the others need not wait for it.
    validate = evaluation.make_validator(config, model, val_images) if is_lead else None
    any_flag = make_flag_reducer(mesh) if num_processes > 1 else None

    def run_validation(step: int, params) -> dict[str, float]:
        if validate is None:
            return {}
        scores, strip = validate(jax.device_get(params))
        writer.log_eval(step, scores, strip)
        return scores

    def save(step: int, state: TrainState, position: int) -> None:
        positions = gather_positions(position)  # on every process, at the same steps
        if not bool(_all_finite((state.params, state.opt_state, state.ema_params))):
            raise NonFiniteLossError(f"step {step}: the parameters or the optimiser state are not finite")
        checkpointer.save(step, state, positions)

    step = start_step
    # Metrics (and, on several processes, the stop flag) of the last dispatched step, checked one step late.
    pending: tuple[int, Any, Any] | None = None
    agreed_stop: str | None = None  # on several processes: a signal one of them received
    checked_step = start_step
    last_scores: dict[str, float] = {}
    # Throughput counts only completed steps after the first (which includes compilation).
    window_step, window_start = start_step, time.perf_counter()
    steady_step, steady_start = None, None
    paused_seconds = 0.0
    data_wait = [0.0, 0]  # seconds blocked on the input stream, and steps, since the last log line

    def check_pending() -> None:
        """Waits for the pending step, stops on a non-finite loss, logs every N steps."""
        nonlocal pending, checked_step, window_step, window_start, steady_step, steady_start, agreed_stop
        if pending is None:
            return
        pending_step, pending_metrics, pending_flag = pending
        fetched, flag = jax.device_get((pending_metrics, pending_flag))
        values = {name: float(value) for name, value in fetched.items()}
        if flag is not None and int(flag) and agreed_stop is None:
            agreed_stop = signal.Signals(int(flag)).name
        _check_finite(pending_step, values)
        checked_step, pending = pending_step, None
        now = time.perf_counter()
        if steady_step is None:
            steady_step, steady_start = pending_step, now
        if pending_step % config.log_every_steps == 0 or pending_step == config.num_train_steps:
            throughput = (pending_step - window_step) * config.batch_size / max(now - window_start, 1e-9)
            eta = (config.num_train_steps - pending_step) * config.batch_size / throughput
            # Milliseconds per step the loop was blocked on input: near 0 when it keeps up.
            values["data_wait_ms"] = 1000.0 * data_wait[0] / max(data_wait[1], 1)
            data_wait[:] = [0.0, 0]
            writer.log_train(pending_step, config.num_train_steps, values, throughput, format_duration(eta))
            window_step, window_start = pending_step, now

    def stopped_by() -> str | None:
        # One process stops at once; several stop at the step where all learn of the signal.
        return stop.received if any_flag is None else agreed_stop

    with _StopSignal() as stop:
        try:
            try:
                while step < config.num_train_steps and stopped_by() is None:
                    local, hr, waited = next(batches)
                    data_wait[0] += waited
                    data_wait[1] += 1
                    state, metrics = train_step(state, hr)
                    check_pending()  # overlaps the host sync with the step just dispatched
                    step += 1
                    data_position = int(local["position"].max()) + 1
                    flag = None
                    if any_flag is not None:
                        flag = any_flag(signal.Signals[stop.received].value if stop.received else 0)
                    pending = (step, metrics, flag)
                    if step % config.checkpoint_every_steps == 0 or step % config.eval_every_steps == 0:
                        check_pending()  # never save or evaluate a state that has not been checked
                        paused_from = time.perf_counter()
                        if step % config.checkpoint_every_steps == 0:
                            save(step, state, data_position)
                        if step % config.eval_every_steps == 0:
                            last_scores = run_validation(step, eval_params(state))
                        # Throughput counts training only, not saving and validation.
                        window_step, window_start = checked_step, time.perf_counter()
                        paused_seconds += window_start - paused_from
                check_pending()
            finally:
                # A crash (including a non-finite loss) keeps the last good checkpoint:
                # only states whose metrics were checked are saved.
                try:
                    if step == checked_step and step > start_step and not checkpointer.has(step):
                        save(step, state, data_position)
                finally:
                    checkpointer.close()
        except NonFiniteLossError as err:
            latest = checkpointer.latest_step()
            kept = (f"the last checkpoint, step {latest} in {checkpointer.directory}, is kept"
                    if latest is not None else "no checkpoint was saved before it")
            writer.close()
            raise NonFiniteLossError(f"{err}; stopped without saving it: {kept}; lower learning_rate "
                                     "or check the data") from None

    if stopped_by() is not None:
        writer.log_text(f"{stopped_by()}: saved step {step}; rerun the same command to resume")
        writer.close()
        return {"step": step, "stopped_by": stopped_by()}

    train_seconds = time.perf_counter() - steady_start - paused_seconds if steady_start is not None else 0.0
    steady_images = (checked_step - steady_step) * config.batch_size if steady_step is not None else 0
    if not last_scores or step % config.eval_every_steps:
        last_scores = run_validation(step, eval_params(state))
    summary = {
        "step": step,
        **{f"val_{name}": value for name, value in last_scores.items()},
        # Steady state: from the end of the first step (compilation) to the last.
        "images_per_second": steady_images / train_seconds if steady_images else None,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - run_start,
        "num_devices": num_devices,
        "num_processes": num_processes,
        "parameters": models.count_params(state.params),
    }
    writer.write_summary(summary)
    writer.close()
    return summary
