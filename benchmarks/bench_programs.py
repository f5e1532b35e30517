"""What the benchmarks time: the training step and the model as they are built and called.

Shared by the JAX side of ``bench.py`` (``bench_worker.py``), ``accelerator.py`` and
``conv_choice.py``. Each function builds on this process's devices; nothing here starts a
process or prints.
"""

from __future__ import annotations

import importlib.util
import pathlib
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from drn_jax import config as config_lib
from drn_jax import training

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation


def timeit(fn: Callable[[], Any], *, warmup: int, steps: int) -> list[float]:
    """Wall seconds of ``fn()`` (which must block until its result is ready) after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    """``median_s``, ``min_s`` and ``steps`` of a list of seconds."""
    return {"median_s": statistics.median(times), "min_s": min(times), "steps": len(times)}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_config(name: str, quick: bool) -> ml_collections.ConfigDict:
    """The training config of ``x4``, ``x8`` (the paper's model at the PyTorch peer's sizes: HR
    patch 96, batch 16) or ``tiny`` (``configs/default.py`` as is); `quick`: R 2, batch 4."""
    if name == "tiny":
        spec = importlib.util.spec_from_file_location("default_config", REPO / "configs" / "default.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    else:
        config = config_lib.base_config()
        config.scale = {"x4": 4, "x8": 8}[name]
        config.data.hr_patch_size = 96  # the PyTorch peer's size, not the paper's 192/384
        config.batch_size = 16
    if quick and name != "tiny":
        config.model.modules_per_block = 2
        config.batch_size = 4
    return config


def lowered_flops(lowered: jax.stages.Lowered) -> float | None:
    """XLA's FLOP count of a lowered (not yet compiled) program. Counted before compilation, since
    on GPU the compiled convolutions become library calls that the cost analysis skips."""
    try:
        analysis = lowered.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0)) or None


def lower_step(config: ml_collections.ConfigDict) -> tuple[jax.stages.Lowered, Any, Any]:
    """(lowered training step, state, batch) for `config` on this process's devices."""
    model = training.create_model(config)
    optimizer = training.create_optimizer(config)
    mesh = training.make_mesh()
    state = training.replicate(
        training.create_train_state(config, model, optimizer, jax.random.key(0)), mesh)
    step = training.make_train_step(config, model, optimizer, mesh)
    patch = config.data.hr_patch_size
    hr = np.random.default_rng(0).integers(0, 256, (config.batch_size, patch, patch, 3), dtype=np.uint8)
    batch = training.global_batch(hr, mesh)
    return step.lower(state, batch), state, batch


def make_step(config: ml_collections.ConfigDict) -> tuple[jax.stages.Compiled, Any, Any, float, float | None]:
    """(compiled step, state, batch, compile seconds, FLOPs per step) for `config` on this
    process's devices."""
    start = time.perf_counter()
    lowered, state, batch = lower_step(config)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return compiled, state, batch, compile_s, lowered_flops(lowered)


def time_step(compiled: jax.stages.Compiled, state: Any, batch: Any, *, warmup: int,
              steps: int) -> tuple[list[float], float]:
    """(seconds of each timed step, the last step's total loss); the state is threaded through."""
    box = {"state": state}

    def run():
        box["state"], metrics = compiled(box["state"], batch)
        jax.block_until_ready(metrics)
        box["loss"] = metrics["total"]

    times = timeit(run, warmup=warmup, steps=steps)
    return times, float(box["loss"])


def small_init(model: nn.Module) -> Any:
    """The model's variables, initialised on a 16² input: parameters do not depend on the image
    size, and ``model.init`` runs the whole training forward pass (every level, the dual blocks),
    which at the benchmark's 256² input alone peaked at several GB and dominated the inference
    benchmark's memory before."""
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3), jnp.float32))


def count_compilations() -> list[float]:
    """A list that collects the seconds of every XLA compilation from now on (jax.monitoring).

    Benchmark entry points only: the listener is process-wide and stays registered.
    """
    seconds: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: seconds.append(secs) if event == BACKEND_COMPILE_EVENT else None)
    return seconds
