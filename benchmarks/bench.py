#!/usr/bin/env python3
"""drn-jax performance suite: one JSON line per measurement on stdout, a Markdown table on stderr.

    python benchmarks/bench.py                               # everything
    python benchmarks/bench.py --only train_x4,infer_x4      # a subset
    python benchmarks/bench.py --compare_torch .venv-torch/bin/python   # + the PyTorch peer, A/B
    python benchmarks/bench.py --quick                       # smoke run (few steps, small sizes)

Benchmarks (``--only`` names):

* ``train_x4``, ``train_x8``, ``train_tiny``: the full jitted training step of
  :func:`drn_jax.training.make_train_step` (GS loss, dual, on-device LR pyramid, Adam) on a uint8
  HR batch. x4/x8 are the paper's model (F 64, R 7) at HR patch 96, batch 16 (the PyTorch peer's
  sizes); tiny is ``configs/default.py`` as is. Compile time separately; median step time after
  warm-up.
* ``breakdown_x4``: where the x4 step's time goes: pyramid, forward, objective (GS loss, all
  levels), forward+backward, optimizer update, measured as separate jitted functions.
* ``infer_x4``: ``model.apply(v, lr, method="upscale")`` jitted, one LR image of 128² and 256².
* ``gs_loss``: GS loss value+gradient vs L1 on a (16, 192, 192, 3) batch, the DRN objective's
  value+gradient at the x4 step's sizes, and its share of the x4 step.
* ``pipeline``: HR crops/s of ``folder:../shared/data/train`` (patch 96) with 1 and 2 threads,
  against the images/s the x4 step consumes.
* ``upscale_large``: drn-upscale's tiled path on a 4096² random image at x4 (small random DRN):
  peak RSS against the output's size (the memory bound of the tiling).
* ``eval_set14``: wall time and XLA compilations (counted with ``jax.monitoring``) of a pass over
  Set14 at x4 as eval.py makes it: LR generation, the Bicubic and DRN rows, scoring (random
  F 64 R 7 model).

Every benchmark runs in a subprocess of its own; ``peak_rss_mb`` is that process's peak resident
memory. With ``--compare_torch PYTHON`` the training and inference benchmarks alternate JAX and
PyTorch runs (``PYTHON ../shared/peers/torch_drn.py bench ...``, 2 threads, channels-last for
inference) ``--repeats`` times and report ``torch_s / jax_s`` (> 1: JAX is faster). Load from
other processes slows both sides alike only when they alternate, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TORCH_PEER = SHARED / "peers" / "torch_drn.py"
TRAIN_DATA = SHARED / "data" / "train"
SET14 = SHARED / "data" / "benchmark"

BENCHMARKS = ("train_x4", "train_x8", "train_tiny", "breakdown_x4", "infer_x4", "gs_loss",
              "pipeline", "eval_set14", "variants_x4", "upscale_large")
TORCH_COMPARABLE = ("train_x4", "train_x8", "infer_x4")

# glibc malloc settings that keep freed memory in the process: XLA allocates each step's
# temporaries (hundreds of MB) afresh, which glibc otherwise maps and unmaps every step, so the
# kernel zeroes and faults them in again (~0.3 s of system time per x4 step). One arena, no
# mmap and no trimming keep them in the heap. ``--malloc default`` measures without.
TUNED_MALLOC = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


# ---------------------------------------------------------------------------------------------
# Worker side: runs inside a fresh subprocess, prints one JSON object on its last stdout line.
# ---------------------------------------------------------------------------------------------

def _timeit(fn, *, warmup: int, steps: int) -> list[float]:
    """Wall seconds of ``fn()`` (which must block until its result is ready) after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "steps": len(times)}


def _train_config(name: str, quick: bool):
    from drn_jax import config as config_lib

    if name == "tiny":
        import importlib.util

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


def lowered_flops(lowered) -> float | None:
    """XLA's FLOP count of a lowered (not yet compiled) program. Counted before compilation, since
    on GPU the compiled convolutions become library calls that the cost analysis skips."""
    try:
        analysis = lowered.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0)) or None


def _lower_step(config):
    """(lowered training step, state, batch) for `config` on this process's devices."""
    import jax
    import numpy as np

    from drn_jax import training

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


def _make_step(config):
    """(compiled step, state, batch, compile seconds, FLOPs per step) for `config` on this
    process's devices."""
    start = time.perf_counter()
    lowered, state, batch = _lower_step(config)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return compiled, state, batch, compile_s, lowered_flops(lowered)


def _time_step(compiled, state, batch, *, warmup: int, steps: int) -> tuple[list[float], float]:
    import jax

    box = {"state": state}

    def run():
        box["state"], metrics = compiled(box["state"], batch)
        jax.block_until_ready(metrics)
        box["loss"] = metrics["total"]

    times = _timeit(run, warmup=warmup, steps=steps)
    return times, float(box["loss"])


def work_train(args) -> dict:
    import jax

    from drn_jax import models

    config = _train_config(args.variant, args.quick)
    config.model.dtype = args.dtype
    config.model.remat = args.remat
    compiled, state, batch, compile_s, flops = _make_step(config)
    memory = compiled.memory_analysis()
    times, loss = _time_step(compiled, state, batch, warmup=args.warmup, steps=args.steps)
    summary = _summary(times)
    return {
        "config": args.variant, "scale": config.scale, "features": config.model.features,
        "modules_per_block": config.model.modules_per_block, "batch": config.batch_size,
        "hr_patch": config.data.hr_patch_size, "loss": config.loss.name, "dtype": config.model.dtype,
        "devices": jax.device_count(),
        "params": models.count_params(state.params), "compile_s": compile_s, "flops_per_step": flops,
        "remat": config.model.remat, "xla_temp_mb": memory.temp_size_in_bytes / 2**20 if memory else None,
        **summary,
        "images_per_s": config.batch_size / summary["median_s"], "final_loss": loss,
    }


def work_breakdown(args) -> dict:
    """Separately jitted parts of the x4 step (their sum exceeds the fused step a little)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from drn_jax import losses, training

    config = _train_config("x4", args.quick)
    model = training.create_model(config)
    optimizer = training.create_optimizer(config)
    state = training.create_train_state(config, model, optimizer, jax.random.key(0))
    params = state.params
    patch, scale = config.data.hr_patch_size, config.scale
    hr = jnp.asarray(np.random.default_rng(0).integers(0, 256, (config.batch_size, patch, patch, 3),
                                                       dtype=np.uint8))
    loss_fn = training.make_loss_fn(config, model)

    def pyramid(hr_u8):
        return training.lr_pyramid(hr_u8.astype(jnp.float32) / 255.0, scale)

    lr, targets = jax.jit(pyramid)(hr)
    outputs = jax.jit(model.apply)({"params": params}, lr)
    primal_targets, dual_targets = training._level_targets(config, lr, targets, outputs.primal)

    def objective(primal, dual):
        return losses.drn_objective(primal, primal_targets, dual, dual_targets, loss=config.loss.name,
                                    lam=config.loss.lam, dual_weight=config.loss.dual_weight)[0]

    def forward_backward(p, hr_u8):
        return jax.value_and_grad(lambda q: loss_fn(q, hr_u8)[0])(p)

    grads = jax.jit(jax.grad(lambda q: loss_fn(q, hr)[0]))(params)

    def update(g, opt_state, p):
        updates, opt_state = optimizer.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    parts = {
        "pyramid": (jax.jit(pyramid), (hr,)),
        "forward": (jax.jit(lambda p, x: model.apply({"params": p}, x)), (params, lr)),
        "objective_value_and_grad": (jax.jit(jax.value_and_grad(objective, argnums=(0, 1))),
                                     (outputs.primal, outputs.dual)),
        "forward_backward": (jax.jit(forward_backward), (params, hr)),
        "optimizer_update": (jax.jit(update), (grads, state.opt_state, params)),
    }
    result = {"batch": config.batch_size, "hr_patch": patch}
    for name, (fn, fn_args) in parts.items():
        times = _timeit(lambda: jax.block_until_ready(fn(*fn_args)), warmup=args.warmup,
                        steps=args.steps)
        result[f"{name}_s"] = statistics.median(times)
    compiled, st, batch, *_ = _make_step(config)
    times, _ = _time_step(compiled, st, batch, warmup=args.warmup, steps=args.steps)
    result["full_step_s"] = statistics.median(times)
    result["backward_only_s_approx"] = result["forward_backward_s"] - result["forward_s"]
    return result


def work_infer(args) -> dict:
    import jax
    import jax.numpy as jnp

    from drn_jax import models

    import resource

    model = models.DRN(4) if not args.quick else models.DRN(4, modules_per_block=2)
    size = args.lr_size
    lr = jax.random.uniform(jax.random.key(1), (1, size, size, 3), jnp.float32)
    variables = _small_init(model)
    upscale = jax.jit(lambda v, x: model.apply(v, x, method="upscale"))
    start = time.perf_counter()
    compiled = upscale.lower(variables, lr).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    rss_compiled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = _timeit(lambda: jax.block_until_ready(compiled(variables, lr)), warmup=args.warmup,
                    steps=args.steps)
    return {"scale": 4, "lr_size": size, "features": model.features,
            "modules_per_block": model.modules_per_block, "compile_s": compile_s,
            "xla_temp_mb": memory.temp_size_in_bytes / 2**20 if memory else None,
            "peak_rss_after_compile_mb": rss_compiled, **_summary(times)}


def _small_init(model):
    """The model's variables, initialised on a 16² input: parameters do not depend on the image
    size, and ``model.init`` runs the whole training forward pass (every level, the dual blocks),
    which at the benchmark's 256² input alone peaked at several GB and dominated the inference
    benchmark's memory before."""
    import jax
    import jax.numpy as jnp

    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3), jnp.float32))


def work_gs_loss(args) -> dict:
    import jax

    from drn_jax import losses, training

    shape = (16, 192, 192, 3) if not args.quick else (4, 96, 96, 3)
    pred = jax.random.uniform(jax.random.key(0), shape)
    target = jax.random.uniform(jax.random.key(1), shape)
    result = {"shape": list(shape)}
    for name in ("gs", "l1"):
        fn = jax.jit(jax.value_and_grad(losses.get_loss(name)))
        times = _timeit(lambda: jax.block_until_ready(fn(pred, target)), warmup=args.warmup,
                        steps=args.steps)
        result[f"{name}_value_and_grad_s"] = statistics.median(times)
    result["gs_over_l1"] = result["gs_value_and_grad_s"] / result["l1_value_and_grad_s"]

    # The objective of the x4 step (4 GS terms: 2 primal + 2 dual levels) vs the step itself,
    # and the step with the L1 loss instead: the difference is what GS costs inside the step.
    config = _train_config("x4", args.quick)
    model = training.create_model(config)
    b, p, s = config.batch_size, config.data.hr_patch_size, config.scale
    levels = [(b, p * 2 ** i // s, p * 2 ** i // s, 3) for i in range(1, 3)]  # primal: 48, 96
    duals = [(b, p // s, p // s, 3), levels[0]]  # dual: 24, 48
    keys = iter(jax.random.split(jax.random.key(2), 8))
    primal = [jax.random.uniform(next(keys), q) for q in levels]
    dual = [jax.random.uniform(next(keys), q) for q in duals]
    primal_t = [jax.random.uniform(next(keys), q) for q in levels]
    dual_t = [jax.random.uniform(next(keys), q) for q in duals]

    def objective(pr, du):
        return losses.drn_objective(pr, primal_t, du, dual_t, loss="gs")[0]

    fn = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
    times = _timeit(lambda: jax.block_until_ready(fn(primal, dual)), warmup=args.warmup,
                    steps=args.steps)
    result["x4_objective_value_and_grad_s"] = statistics.median(times)
    del model
    steps = {}
    for loss in ("gs", "l1"):
        config.loss.name = loss
        steps[loss] = _make_step(config)[:3]
    # Alternate the two steps so that load from other processes hits both alike; min of each.
    times = {loss: [] for loss in steps}
    states = {loss: state for loss, (_, state, _) in steps.items()}  # donated: keep the newest
    for round_ in range(max(1, args.steps // 2) + 1):
        for loss, (compiled, _, batch) in steps.items():
            for _ in range(2):
                start = time.perf_counter()
                states[loss], metrics = compiled(states[loss], batch)
                jax.block_until_ready(metrics)
                if round_:  # the first round warms up
                    times[loss].append(time.perf_counter() - start)
    for loss in steps:
        result[f"x4_step_{loss}_s"] = statistics.median(times[loss])
        result[f"x4_step_{loss}_min_s"] = min(times[loss])
    step = result["x4_step_gs_min_s"]
    result["objective_share_of_step"] = result["x4_objective_value_and_grad_s"] / step
    result["gs_minus_l1_share_of_step"] = (step - result["x4_step_l1_min_s"]) / step
    return result


def work_pipeline(args) -> dict:
    from pipeline import measure_throughput  # benchmarks/pipeline.py

    source = f"folder:{args.data}"
    result = {"source": source, "patch": 96, "batch": 16}
    for threads in (1, 2):
        result[f"crops_per_s_{threads}_thread{'s' if threads > 1 else ''}"] = (
            measure_throughput(source, 96, 16, args.seconds, threads))
    return result


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation


def count_compilations() -> list[float]:
    """A list that collects the seconds of every XLA compilation from now on (jax.monitoring).

    Benchmark entry points only: the listener is process-wide and stays registered.
    """
    import jax

    seconds: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: seconds.append(secs) if event == BACKEND_COMPILE_EVENT else None)
    return seconds


def work_eval_set14(args) -> dict:
    """A Set14 x4 pass as eval.py makes it (LR generation, Bicubic and DRN rows, scoring), a
    random F 64 R 7 model; every XLA compilation of the pass counted."""
    import jax
    import jax.numpy as jnp

    from drn_jax import evaluation, inference, models

    compiles = count_compilations()
    model = models.DRN(4) if not args.quick else models.DRN(4, modules_per_block=2)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    dataset = evaluation.open_dataset("Set14", args.data)
    runner = inference.ModelRunner(model)
    upscaler = inference.make_upscaler(runner, variables=variables)
    methods = {"Bicubic": inference.BicubicUpscaler(4), "DRN": upscaler}
    before = len(compiles)
    start = time.perf_counter()
    results = evaluation.evaluate(methods, [dataset], 4, progress=False)
    wall = time.perf_counter() - start
    return {"images": len(dataset), "wall_s": wall, "network_seconds": results.seconds("DRN"),
            "network_compilations": upscaler.compilations, "jit_cache_size": runner.cache_size(),
            "xla_compilations_total": len(compiles) - before,
            "xla_compile_seconds_total": sum(compiles[before:]),
            "psnr_random_init": results.summary("DRN")["Set14"]["psnr"],
            "psnr_bicubic": results.summary("Bicubic")["Set14"]["psnr"]}


def work_upscale_large(args) -> dict:
    """drn-upscale's path (read picture -> tiled network -> 8-bit output) on a large random image:
    peak RSS against the bound the tiling promises, the output plus a fixed tile budget.

    A small random DRN (F 8, R 1: the memory of the tiling does not depend on the width, the time
    does), tile 256; ``--lr_size`` sets the input side (4096 in the docs)."""
    import resource

    import jax
    import numpy as np

    from drn_jax import image_io, inference, models, upscale

    def rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    model = models.DRN(4, features=8, modules_per_block=1)
    variables = _small_init(model)
    side = args.lr_size
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    picture = image_io.Picture(pixels.astype(np.float32) / np.float32(255), None, 8)
    del pixels
    upscaler = inference.make_upscaler(model, variables=variables, tile=256, devices=jax.local_devices())
    small = image_io.Picture(picture.colour[:300, :300], None, 8)  # compiles the tile program
    upscale.upscale_picture(small, upscaler)
    baseline = rss()
    start = time.perf_counter()
    out = upscale.upscale_picture(picture, upscaler)
    seconds = time.perf_counter() - start
    peak = rss()
    output_mb = out.nbytes / 2**20
    return {"lr_side": side, "output_shape": list(out.shape), "seconds": seconds,
            "rss_before_mb": baseline, "peak_rss_mb_during": peak, "output_mb": output_mb,
            "growth_over_output_mb": peak - baseline - output_mb, "tiles_compilations": upscaler.compilations}


# ---------------------------------------------------------------------------------------------
# Lockstep servers: one process per framework, each idle while the other runs one step, so that
# load from other processes falls on both alike (a comparison that survives a shared machine).
# Protocol: the server prints "ready" once warm, then answers each "step" line with the seconds
# that step took, and exits on "quit".
# ---------------------------------------------------------------------------------------------

def _serve(step_fn) -> None:
    import resource

    step_fn()  # warm-up
    step_fn()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        step_fn()
        print(f"{time.perf_counter() - start:.6f}", flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def serve_jax(args) -> None:
    import jax
    import jax.numpy as jnp

    from drn_jax import models

    if args.mode == "train":
        config = _train_config(args.variant, args.quick)
        config.model.dtype = args.dtype
        config.model.remat = args.remat
        config.model.conv = args.conv
        compiled, state, batch, *_ = _make_step(config)
        box = {"state": state}

        def step_fn():
            box["state"], metrics = compiled(box["state"], batch)
            jax.block_until_ready(metrics)
    else:
        model = models.DRN(4, modules_per_block=2 if args.quick else 7, dtype=jnp.dtype(args.dtype),
                           conv=args.conv)
        lr = jax.random.uniform(jax.random.key(1), (1, args.lr_size, args.lr_size, 3), jnp.float32)
        variables = _small_init(model)
        upscale = jax.jit(lambda v, x: model.apply(v, x, method="upscale")).lower(variables, lr).compile()

        def step_fn():
            jax.block_until_ready(upscale(variables, lr))
    _serve(step_fn)


def load_torch_peer(path: str | pathlib.Path):
    """The PyTorch peer (``torch_drn.py``) as a module, never installed or imported by the package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("torch_drn", path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    return peer


def serve_torch(args) -> None:
    """The PyTorch peer's own model, loss, pyramid and step (imported from torch_drn.py)."""
    import torch

    peer = load_torch_peer(TORCH_PEER)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    blocks = 2 if args.quick else 7
    if args.mode == "train":
        scale = {"x4": 4, "x8": 8}[args.variant]
        batch = 4 if args.quick else 16
        model = peer.DRN(scale, 64, blocks)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        hr = torch.rand(batch, 3, 96, 96)

        def step_fn():  # cmd_bench's step
            lr, levels = peer.make_pyramid(hr, scale)
            opt.zero_grad(set_to_none=True)
            loss = peer.drn_loss(model, lr, levels, 2.0, "pred")
            loss.backward()
            opt.step()
    else:
        model = peer.DRN(4, 64, blocks).to(memory_format=torch.channels_last)
        model.eval()
        x = torch.rand(1, 3, args.lr_size, args.lr_size).contiguous(memory_format=torch.channels_last)

        def step_fn():
            with torch.inference_mode():
                model(x)[-1]
    _serve(step_fn)


WORKERS = {"train": work_train, "breakdown": work_breakdown, "infer": work_infer,
           "gs_loss": work_gs_loss, "pipeline": work_pipeline, "eval_set14": work_eval_set14,
           "upscale_large": work_upscale_large}


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(WORKERS) + ["serve_jax", "serve_torch"])
    parser.add_argument("--mode", default="train")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--conv", default="auto", help="serve_jax: the models' conv algorithm (auto|winograd|xla)")
    parser.add_argument("--variant", default="x4")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lr_size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    if args.kind in ("serve_jax", "serve_torch"):
        (serve_jax if args.kind == "serve_jax" else serve_torch)(args)
        return
    result = WORKERS[args.kind](args)
    import resource

    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------

def run_process(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> tuple[dict, float]:
    """Runs `cmd`, returns (its last stdout line as JSON, peak RSS in MiB from wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env=env, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"timed out: {' '.join(cmd)}")
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    result = json.loads(lines[-1])
    return result, result.get("peak_rss_mb", float("nan"))


def child_env(malloc: str) -> dict:
    env = dict(os.environ)
    if malloc == "tuned":
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), TUNED_MALLOC]))
    return env


def jax_cmd(kind: str, *extra: str) -> list[str]:
    return [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", kind, *extra]


def torch_cmd(python: str, mode: str, opts) -> list[str]:
    return [python, str(TORCH_PEER), "bench", "--mode", mode, *opts, "--threads", "2"]


def _peak_rss_of(cmd: list[str], env=None) -> tuple[dict, float]:
    """Like run_process for programs that do not report their own RSS (the PyTorch peer)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env,
                            text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return json.loads(lines[-1]), usage.ru_maxrss / 1024


class Server:
    """A warm benchmark server (see `_serve`): one step per `step()` call, its seconds back."""

    def __init__(self, name: str, cmd: list[str], env: dict):
        self.name = name
        self.peak_rss_mb = float("nan")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        while True:  # compiles and warms up before anything else starts
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"lockstep: the {name} server exited before it was ready: {' '.join(cmd)}")
            if line.strip() == "ready":
                return

    def step(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            for line in self.proc.stdout:
                if line.startswith("{"):
                    self.peak_rss_mb = json.loads(line)["peak_rss_mb"]
        except (OSError, ValueError):
            pass
        self.proc.wait(timeout=60)


def jax_server(name: str, argv: list[str], env: dict) -> Server:
    return Server(name, [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", "serve_jax",
                         *argv], env)


def torch_server(python: str, argv: list[str], env: dict) -> Server:
    return Server("torch", [python, str(pathlib.Path(__file__).resolve()), "--worker", "serve_torch", *argv],
                  env)


def alternate_steps(first: Server, second: Server, pairs: int) -> tuple[list[float], list[float], list[float]]:
    """`pairs` single steps of each, alternating, so that load from other processes falls on both
    alike; (first's seconds, second's seconds, load averages)."""
    a, b, loads = [], [], []
    for _ in range(pairs):
        loads.append(os.getloadavg()[0])
        a.append(first.step())
        b.append(second.step())
    return a, b, loads


def lockstep(jax_argv: list[str], torch_python: str, torch_argv: list[str], pairs: int,
             jax_env: dict, torch_env: dict) -> dict:
    """JAX and PyTorch servers stepping alternately; medians, minima and their ratios."""
    jax_srv = jax_server("jax", jax_argv, jax_env)
    try:
        torch_srv = torch_server(torch_python, torch_argv, torch_env)
        try:
            j, t, loads = alternate_steps(jax_srv, torch_srv, pairs)
        finally:
            torch_srv.close()
    finally:
        jax_srv.close()
    return {"lockstep_pairs": pairs, "lockstep_jax_s": j, "lockstep_torch_s": t,
            "lockstep_jax_median_s": _median(j), "lockstep_torch_median_s": _median(t),
            "lockstep_jax_min_s": min(j), "lockstep_torch_min_s": min(t),
            "lockstep_torch_over_jax_median": _median(t) / _median(j),
            "lockstep_torch_over_jax_min": min(t) / min(j),
            "lockstep_pair_ratio_median": _median([b / a for a, b in zip(j, t)]),
            "lockstep_loadavg": loads,
            "lockstep_jax_peak_rss_mb": jax_srv.peak_rss_mb, "lockstep_torch_peak_rss_mb": torch_srv.peak_rss_mb}


# What was tried on the x4 training step (docs/performance.md): name -> (serve_jax options,
# environment changes; None removes a variable). Each runs in lockstep against the default.
VARIANTS = {
    "conv_direct": (["--conv", "xla"], {}),
    "malloc_default": ([], {"GLIBC_TUNABLES": None}),
    "bfloat16": (["--dtype", "bfloat16"], {}),
    "remat": (["--remat"], {}),
    "xla_onednn": ([], {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}),
    "xla_fast_math": ([], {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}),
    "xla_vector_width_512": ([], {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"}),
}


def variants(argv: list[str], names: list[str], pairs: int, env: dict) -> list[dict]:
    """The default x4 step against each variant, alternating single steps of two warm servers."""
    records = []
    base = jax_server("default", argv, env)
    try:
        for name in names:
            extra_argv, changes = VARIANTS[name]
            variant_env = dict(env)
            for key, value in changes.items():
                if value is None:
                    variant_env.pop(key, None)
                else:
                    variant_env[key] = value
            try:
                other = jax_server(name, argv + extra_argv, variant_env)
            except RuntimeError as err:
                records.append({"bench": f"variant_{name}", "error": str(err)[-1000:]})
                continue
            try:
                default_s, variant_s, loads = alternate_steps(base, other, pairs)
            finally:
                other.close()
            records.append({
                "bench": f"variant_{name}", "options": extra_argv, "env": changes,
                "default_median_s": _median(default_s), "variant_median_s": _median(variant_s),
                "default_s": default_s, "variant_s": variant_s, "loadavg": loads,
                "speedup": _median(default_s) / _median(variant_s),
                "pair_speedup_median": _median([d / v for d, v in zip(default_s, variant_s)]),
                "variant_peak_rss_mb": other.peak_rss_mb})
    finally:
        base.close()
    for record in records:
        record["default_peak_rss_mb"] = base.peak_rss_mb
    return records


def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    for name in ("XLA_FLAGS", "GLIBC_TUNABLES"):
        if os.environ.get(name):
            info[name] = os.environ[name]
    return info


def emit(record: dict, records: list) -> None:
    records.append(record)
    print(json.dumps(record), flush=True)


def _median(values):
    return statistics.median(values) if values else float("nan")


def run_suite(args) -> list[dict]:
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    quick = ["--quick"] if args.quick else []
    steps = args.steps or (3 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    common = ["--steps", str(steps), "--warmup", str(args.warmup), *quick]
    records: list[dict] = []
    emit({"bench": "machine", **machine(), "malloc": args.malloc, "torch_malloc": args.torch_malloc}, records)

    def torch_train_opts(scale):
        feats, blocks, batch = ("64", "2", "4") if args.quick else ("64", "7", "16")
        return ["--scale", str(scale), "--feats", feats, "--blocks", blocks, "--batch", batch,
                "--patch", "96", "--steps", str(steps), "--warmup", str(args.warmup)]

    def torch_infer_opts(size):
        blocks = "2" if args.quick else "7"
        return ["--scale", "4", "--feats", "64", "--blocks", blocks, "--lr-size", str(size),
                "--steps", str(steps), "--warmup", str(args.warmup), "--channels-last"]

    jax_env, torch_env = child_env(args.malloc), child_env(args.torch_malloc)
    infer_env = child_env(args.infer_malloc)

    def alternate(name, jax_c, torch_c, torch_key="median_s", env=None):
        """JAX, torch, JAX, torch, ...; per-pair ratios and the ratio of medians."""
        jax_runs, torch_runs, loads = [], [], []
        for _ in range(repeats):
            loads.append(os.getloadavg()[0])
            jax_runs.append(run_process(jax_c, env=env or jax_env, timeout=args.timeout))
            if torch_c is not None:
                loads.append(os.getloadavg()[0])
                torch_runs.append(_peak_rss_of(torch_c, env=torch_env))
        j = [r["median_s"] for r, _ in jax_runs]
        middle = sorted(range(len(j)), key=lambda i: j[i])[(len(j) - 1) // 2]
        record = dict(jax_runs[middle][0])  # the run with the median time, for its other fields
        record.update({"bench": name, "median_s": _median(j), "runs_s": j, "malloc": args.malloc,
                       "peak_rss_mb": max(rss for _, rss in jax_runs), "loadavg_before_runs": loads})
        if torch_runs:
            t = [r[torch_key] for r, _ in torch_runs]
            record.update({"torch_median_s": _median(t), "torch_runs_s": t, "torch_malloc": args.torch_malloc,
                           "torch_peak_rss_mb": max(rss for _, rss in torch_runs),
                           "torch_over_jax": _median(t) / _median(j),
                           "pair_ratios": [tt / jj for tt, jj in zip(t, j)]})
        return record

    for name in names:
        try:
            if name.startswith("train_"):
                variant = name.split("_", 1)[1]
                cmd = jax_cmd("train", "--variant", variant, *common)
                tcmd = None
                if args.compare_torch and variant in ("x4", "x8"):
                    tcmd = torch_cmd(args.compare_torch, "train", torch_train_opts(4 if variant == "x4" else 8))
                record = alternate(name, cmd, tcmd)
                record["images_per_s"] = record["batch"] / record["median_s"]
                if "torch_median_s" in record:
                    record["torch_images_per_s"] = record["batch"] / record["torch_median_s"]
                if tcmd is not None and args.lockstep:
                    argv = ["--mode", "train", "--variant", variant, *quick]
                    record.update(lockstep(argv, args.compare_torch, argv, args.lockstep, jax_env, torch_env))
                emit(record, records)
            elif name == "infer_x4":
                for size in ((64, 128) if args.quick else (128, 256)):
                    cmd = jax_cmd("infer", "--lr_size", str(size), *common)
                    tcmd = torch_cmd(args.compare_torch, "infer", torch_infer_opts(size)) if args.compare_torch else None
                    record = alternate(f"infer_x4_{size}", cmd, tcmd, env=infer_env)
                    record["malloc"] = args.infer_malloc
                    if tcmd is not None and args.lockstep:
                        argv = ["--mode", "infer", "--lr_size", str(size), *quick]
                        record.update(lockstep(argv, args.compare_torch, argv, args.lockstep, jax_env, torch_env))
                    emit(record, records)
            elif name == "breakdown_x4":
                record, _ = run_process(jax_cmd("breakdown", *common), env=jax_env, timeout=args.timeout)
                emit({"bench": name, **record}, records)
            elif name == "gs_loss":
                record, _ = run_process(jax_cmd("gs_loss", *common), env=jax_env, timeout=args.timeout)
                emit({"bench": name, **record}, records)
            elif name == "pipeline":
                if not TRAIN_DATA.is_dir():
                    emit({"bench": name, "skipped": f"{TRAIN_DATA} not found"}, records)
                    continue
                seconds = "3" if args.quick else str(args.pipeline_seconds)
                record, _ = run_process(jax_cmd("pipeline", "--data", str(TRAIN_DATA), "--seconds", seconds),
                                        env=jax_env, timeout=args.timeout)
                step = next((r for r in records if r.get("bench") == "train_x4"), None)
                if step is None:  # the rate the x4 step consumes, measured here if not run above
                    step, _ = run_process(jax_cmd("train", "--variant", "x4", *common), env=jax_env,
                                          timeout=args.timeout)
                    step["images_per_s"] = step["batch"] / step["median_s"]
                record["x4_step_images_per_s"] = step["images_per_s"]
                record["one_thread_over_step"] = record["crops_per_s_1_thread"] / step["images_per_s"]
                emit({"bench": name, **record}, records)
            elif name == "variants_x4":
                chosen = args.variants.split(",") if args.variants else list(VARIANTS)
                unknown = sorted(set(chosen) - set(VARIANTS))
                if unknown:
                    sys.exit(f"unknown variant(s): {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
                argv = ["--mode", "train", "--variant", "x4", *quick]
                for record in variants(argv, chosen, args.lockstep or 6, jax_env):
                    emit(record, records)
            elif name == "upscale_large":
                size = "512" if args.quick else "4096"
                record, _ = run_process(jax_cmd("upscale_large", "--lr_size", size), env=jax_env,
                                        timeout=args.timeout)
                emit({"bench": name, **record}, records)
            elif name == "eval_set14":
                if not (SET14 / "Set14" / "HR").is_dir():
                    emit({"bench": name, "skipped": f"{SET14}/Set14/HR not found"}, records)
                    continue
                record, _ = run_process(jax_cmd("eval_set14", "--data", str(SET14), *quick), env=jax_env,
                                        timeout=args.timeout)
                emit({"bench": name, **record}, records)
        except RuntimeError as err:
            emit({"bench": name, "error": str(err)[-2000:]}, records)
    emit({"bench": "machine_after", "loadavg_1min": os.getloadavg()[0]}, records)
    return records


def _ratio_text(r: dict) -> str:
    if "torch_over_jax" not in r:
        return "-"
    text = f"runs {r['torch_over_jax']:.2f}x"
    if "lockstep_torch_over_jax_median" in r:
        text += (f"; lockstep {r['lockstep_torch_over_jax_median']:.2f}x "
                 f"({r['lockstep_jax_median_s']:.3f} vs {r['lockstep_torch_median_s']:.3f} s)")
    return text


def markdown(records: list[dict]) -> str:
    """The table docs/performance.md shows."""
    rows = ["| benchmark | JAX | PyTorch peer | torch/JAX (>1: JAX faster) | JAX peak RSS |",
            "|---|---|---|---|---|"]

    def fmt_s(x):
        return f"{x:.3f} s" if x == x else "-"

    for r in records:
        b = r.get("bench")
        if b in ("machine", "machine_after") or "error" in r or "skipped" in r:
            continue
        rss = f"{r.get('peak_rss_mb', float('nan')):.0f} MiB"
        if b.startswith("train_"):
            jax_s = f"{fmt_s(r['median_s'])}/step, {r['images_per_s']:.1f} img/s (compile {r['compile_s']:.1f} s)"
            torch_s = (f"{fmt_s(r['torch_median_s'])}/step, {r['torch_images_per_s']:.1f} img/s"
                       if "torch_median_s" in r else "-")
            ratio = _ratio_text(r)
            rows.append(f"| {b} (batch {r['batch']}, HR {r['hr_patch']}) | {jax_s} | {torch_s} | {ratio} | {rss} |")
        elif b.startswith("infer_x4"):
            torch_s = fmt_s(r["torch_median_s"]) if "torch_median_s" in r else "-"
            ratio = _ratio_text(r)
            rows.append(f"| {b} (LR {r['lr_size']}², batch 1) | {fmt_s(r['median_s'])} | {torch_s} | {ratio} | {rss} |")
        elif b == "breakdown_x4":
            parts = ", ".join(f"{k[:-2]} {v:.3f}" for k, v in r.items() if k.endswith("_s"))
            rows.append(f"| breakdown_x4 (s) | {parts} | - | - | {rss} |")
        elif b == "gs_loss":
            rows.append(f"| gs_loss {tuple(r['shape'])} value+grad | GS {fmt_s(r['gs_value_and_grad_s'])}, "
                        f"L1 {fmt_s(r['l1_value_and_grad_s'])}; x4 objective {fmt_s(r['x4_objective_value_and_grad_s'])} = "
                        f"{100 * r['objective_share_of_step']:.1f}% of the step; step GS-L1 = "
                        f"{100 * r['gs_minus_l1_share_of_step']:.1f}% | - | - | {rss} |")
        elif b == "pipeline":
            rows.append(f"| pipeline crops/s (patch 96) | 1 thread {r['crops_per_s_1_thread']:.0f}, 2 threads "
                        f"{r['crops_per_s_2_threads']:.0f}; x4 step eats {r['x4_step_images_per_s']:.1f} img/s "
                        f"({r['one_thread_over_step']:.0f}x) | - | - | {rss} |")
        elif b.startswith("variant_"):
            rows.append(f"| x4 step, {b[len('variant_'):]} | {fmt_s(r['variant_median_s'])}/step vs default "
                        f"{fmt_s(r['default_median_s'])}: {r['speedup']:.2f}x | - | - | "
                        f"{r['variant_peak_rss_mb']:.0f} MiB (default {r['default_peak_rss_mb']:.0f}) |")
        elif b == "upscale_large":
            rows.append(f"| upscale_large {r['lr_side']}² x4 | {r['seconds']:.1f} s; output {r['output_mb']:.0f} MiB, "
                        f"peak {r['peak_rss_mb_during']:.0f} MiB ({r['growth_over_output_mb']:.0f} MiB over "
                        f"start + output) | - | - | {rss} |")
        elif b == "eval_set14":
            rows.append(f"| eval_set14 x4 ({r['images']} images) | {r['wall_s']:.1f} s, network compilations "
                        f"{r['network_compilations']}, XLA compilations in the pass {r['xla_compilations_total']} "
                        f"| - | - | {rss} |")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: small models, few steps")
    parser.add_argument("--compare_torch", metavar="PYTHON", default=None,
                        help="python of a venv with torch: alternate with the PyTorch peer")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per run (default 10; quick 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=0,
                        help="alternating runs per compared benchmark (default 3; quick 1)")
    parser.add_argument("--pipeline_seconds", type=float, default=10.0)
    parser.add_argument("--malloc", choices=("default", "tuned"), default="tuned",
                        help="glibc malloc settings for the JAX processes (see TUNED_MALLOC)")
    parser.add_argument("--torch_malloc", choices=("default", "tuned"), default="default",
                        help="the same for the PyTorch peer")
    parser.add_argument("--infer_malloc", choices=("default", "tuned"), default="default",
                        help="the same for the JAX inference benchmarks: with the tuned settings (no "
                             "mmap, no trim) each call's freed XLA temp buffer (832 MB at LR 256²) is "
                             "not reused and the peak grows by it every other call")
    parser.add_argument("--lockstep", type=int, default=10, metavar="PAIRS",
                        help="with --compare_torch: also alternate PAIRS single steps of two warm "
                             "servers (robust to load from other processes); 0 turns it off")
    parser.add_argument("--variants", default="",
                        help=f"variants_x4: comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per subprocess, seconds")
    parser.add_argument("--markdown", metavar="PATH", default=None, help="also write the table here")
    args = parser.parse_args()
    if args.compare_torch and not TORCH_PEER.is_file():
        sys.exit(f"--compare_torch: {TORCH_PEER} not found")
    records = run_suite(args)
    table = markdown(records)
    print(table, file=sys.stderr)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
