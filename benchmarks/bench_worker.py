#!/usr/bin/env python3
"""The JAX side of ``bench.py``: one measurement per process, or a warm server of one step.

    python benchmarks/bench_worker.py train --config_name=x4 --steps=10 --warmup=2 [--quick]
    python benchmarks/bench_worker.py serve_jax --mode=train --config_name=x4 [--conv=xla] ...

``bench.py`` starts it; a measurement (``KIND``: one of :data:`WORKERS`) prints one JSON object
on its last stdout line, with this process's ``peak_rss_mb``; ``serve_jax`` speaks
``bench_process.serve``'s protocol.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402  (after the environment and the path are set)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402
from bench_process import serve  # noqa: E402  (benchmarks/, beside this file)
from bench_programs import (count_compilations, make_step, peak_rss_mb, small_init, summary,  # noqa: E402
                            time_step, timeit, train_config)
from pipeline import measure_throughput  # noqa: E402

from drn_jax import cli, evaluation, image_io, inference, losses, models, training, upscale  # noqa: E402

def define_flags(values: flags.FlagValues) -> None:
    """The worker's flags, in `values` (a private `flags.FlagValues`)."""
    flags.DEFINE_enum("mode", "train", ["train", "infer"], "serve_jax: what one step is", flag_values=values)
    flags.DEFINE_string("dtype", "float32", "the model's computation dtype", flag_values=values)
    flags.DEFINE_boolean("remat", False, "config.model.remat", flag_values=values)
    flags.DEFINE_string("conv", "auto", "serve_jax: the models' conv algorithm (auto|winograd|xla)",
                        flag_values=values)
    flags.DEFINE_enum("config_name", "x4", ["x4", "x8", "tiny"], "the training config (see train_config)", flag_values=values)
    flags.DEFINE_integer("steps", 10, "timed steps", flag_values=values)
    flags.DEFINE_integer("warmup", 2, "untimed steps first", flag_values=values)
    flags.DEFINE_integer("lr_size", 128, "the LR side of the inference benchmarks", flag_values=values)
    flags.DEFINE_float("seconds", 10.0, "pipeline: seconds per thread count", flag_values=values)
    flags.DEFINE_string("train_dir", None, "pipeline: a folder of images", flag_values=values)
    flags.DEFINE_string("data_dir", None, "eval_set14: the benchmark folder (<data_dir>/Set14/HR)",
                        flag_values=values)
    flags.DEFINE_boolean("quick", False, "smoke run: small models", flag_values=values)


def work_train(args: flags.FlagValues) -> dict:
    """The full jitted training step: compile time, median step time, XLA's temp memory."""
    config = train_config(args.config_name, args.quick)
    config.model.dtype = args.dtype
    config.model.remat = args.remat
    compiled, state, batch, compile_s, flops = make_step(config)
    memory = compiled.memory_analysis()
    times, loss = time_step(compiled, state, batch, warmup=args.warmup, steps=args.steps)
    timing = summary(times)
    return {
        "config": args.config_name, "scale": config.scale, "features": config.model.features,
        "modules_per_block": config.model.modules_per_block, "batch": config.batch_size,
        "hr_patch": config.data.hr_patch_size, "loss": config.loss.name, "dtype": config.model.dtype,
        "devices": jax.device_count(),
        "params": models.count_params(state.params), "compile_s": compile_s, "flops_per_step": flops,
        "remat": config.model.remat, "xla_temp_mb": memory.temp_size_in_bytes / 2**20 if memory else None,
        **timing,
        "images_per_s": config.batch_size / timing["median_s"], "final_loss": loss,
    }


def _median_time(fn: Callable[[], object], args: flags.FlagValues) -> float:
    return statistics.median(timeit(fn, warmup=args.warmup, steps=args.steps))


def work_breakdown(args: flags.FlagValues) -> dict:
    """Separately jitted parts of the x4 step (their sum exceeds the fused step a little)."""
    config = train_config("x4", args.quick)
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
        result[f"{name}_s"] = _median_time(lambda: jax.block_until_ready(fn(*fn_args)), args)
    compiled, st, batch, *_ = make_step(config)
    times, _ = time_step(compiled, st, batch, warmup=args.warmup, steps=args.steps)
    result["full_step_s"] = statistics.median(times)
    result["backward_only_s_approx"] = result["forward_backward_s"] - result["forward_s"]
    return result


def work_infer(args: flags.FlagValues) -> dict:
    """``model.apply(v, lr, method="upscale")`` jitted on one LR image of ``--lr_size``²."""
    model = models.DRN(4) if not args.quick else models.DRN(4, modules_per_block=2)
    size = args.lr_size
    lr = jax.random.uniform(jax.random.key(1), (1, size, size, 3), jnp.float32)
    variables = small_init(model)
    upscale_fn = jax.jit(lambda v, x: model.apply(v, x, method="upscale"))
    start = time.perf_counter()
    compiled = upscale_fn.lower(variables, lr).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    rss_compiled = peak_rss_mb()
    times = timeit(lambda: jax.block_until_ready(compiled(variables, lr)), warmup=args.warmup,
                   steps=args.steps)
    return {"scale": 4, "lr_size": size, "features": model.features,
            "modules_per_block": model.modules_per_block, "compile_s": compile_s,
            "xla_temp_mb": memory.temp_size_in_bytes / 2**20 if memory else None,
            "peak_rss_after_compile_mb": rss_compiled, **summary(times)}


def work_gs_loss(args: flags.FlagValues) -> dict:
    """GS loss value+gradient against L1, the x4 objective, and GS's share of the x4 step."""
    shape = (16, 192, 192, 3) if not args.quick else (4, 96, 96, 3)
    pred = jax.random.uniform(jax.random.key(0), shape)
    target = jax.random.uniform(jax.random.key(1), shape)
    result = {"shape": list(shape)}
    for name in ("gs", "l1"):
        fn = jax.jit(jax.value_and_grad(losses.get_loss(name)))
        result[f"{name}_value_and_grad_s"] = _median_time(lambda: jax.block_until_ready(fn(pred, target)), args)
    result["gs_over_l1"] = result["gs_value_and_grad_s"] / result["l1_value_and_grad_s"]
    config = train_config("x4", args.quick)
    result["x4_objective_value_and_grad_s"] = _x4_objective_seconds(config, args)
    result.update(_gs_and_l1_steps(config, args))
    step = result["x4_step_gs_min_s"]
    result["objective_share_of_step"] = result["x4_objective_value_and_grad_s"] / step
    result["gs_minus_l1_share_of_step"] = (step - result["x4_step_l1_min_s"]) / step
    return result


def _x4_objective_seconds(config, args: flags.FlagValues) -> float:
    # The objective of the x4 step: 4 GS terms, 2 primal + 2 dual levels.
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
    return _median_time(lambda: jax.block_until_ready(fn(primal, dual)), args)


def _gs_and_l1_steps(config, args: flags.FlagValues) -> dict:
    """The x4 step with the GS loss and with L1 (the difference is what GS costs inside the step),
    alternated so that load from other processes hits both alike; median and min of each."""
    steps = {}
    for loss in ("gs", "l1"):
        config.loss.name = loss
        steps[loss] = make_step(config)[:3]
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
    result = {}
    for loss in steps:
        result[f"x4_step_{loss}_s"] = statistics.median(times[loss])
        result[f"x4_step_{loss}_min_s"] = min(times[loss])
    return result


def work_pipeline(args: flags.FlagValues) -> dict:
    """HR crops/s of the folder source ``--train_dir`` (patch 96, batch 16) with 1 and 2 threads."""
    source = f"folder:{args.train_dir}"
    result = {"source": source, "patch": 96, "batch": 16}
    for threads in (1, 2):
        result[f"crops_per_s_{threads}_thread{'s' if threads > 1 else ''}"] = (
            measure_throughput(source, 96, 16, args.seconds, threads))
    return result


def work_eval_set14(args: flags.FlagValues) -> dict:
    """A Set14 x4 pass as eval.py makes it (LR generation, Bicubic and DRN rows, scoring), a
    random F 64 R 7 model; every XLA compilation of the pass counted."""
    compiles = count_compilations()
    model = models.DRN(4) if not args.quick else models.DRN(4, modules_per_block=2)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    dataset = evaluation.open_dataset("Set14", args.data_dir)
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


def work_upscale_large(args: flags.FlagValues) -> dict:
    """drn-upscale's path (read picture -> tiled network -> 8-bit output) on a large random image:
    peak RSS against the bound the tiling promises, the output plus a fixed tile budget.

    A small random DRN (F 8, R 1: the memory of the tiling does not depend on the width, the time
    does), tile 256; ``--lr_size`` sets the input side (4096 in the docs)."""
    model = models.DRN(4, features=8, modules_per_block=1)
    variables = small_init(model)
    side = args.lr_size
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    picture = image_io.Picture(pixels.astype(np.float32) / np.float32(255), None, 8)
    del pixels
    upscaler = inference.make_upscaler(model, variables=variables, tile=256, devices=jax.local_devices())
    small = image_io.Picture(picture.colour[:300, :300], None, 8)  # compiles the tile program
    upscale.upscale_picture(small, upscaler)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    out = upscale.upscale_picture(picture, upscaler)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    output_mb = out.nbytes / 2**20
    return {"lr_side": side, "output_shape": list(out.shape), "seconds": seconds,
            "rss_before_mb": baseline, "peak_rss_mb_during": peak, "output_mb": output_mb,
            "growth_over_output_mb": peak - baseline - output_mb, "tiles_compilations": upscaler.compilations}


def serve_jax(args: flags.FlagValues) -> None:
    """Serves one training step (``--mode=train``) or one x4 upscale of ``--lr_size``² (``infer``)."""
    if args.mode == "train":
        config = train_config(args.config_name, args.quick)
        config.model.dtype = args.dtype
        config.model.remat = args.remat
        config.model.conv = args.conv
        compiled, state, batch, *_ = make_step(config)
        box = {"state": state}

        def step_fn():
            box["state"], metrics = compiled(box["state"], batch)
            jax.block_until_ready(metrics)
    else:
        model = models.DRN(4, modules_per_block=2 if args.quick else 7, dtype=jnp.dtype(args.dtype),
                           conv=args.conv)
        lr = jax.random.uniform(jax.random.key(1), (1, args.lr_size, args.lr_size, 3), jnp.float32)
        variables = small_init(model)
        upscale_fn = jax.jit(lambda v, x: model.apply(v, x, method="upscale")).lower(variables, lr).compile()

        def step_fn():
            jax.block_until_ready(upscale_fn(variables, lr))
    serve(step_fn)


WORKERS = {"train": work_train, "breakdown": work_breakdown, "infer": work_infer,
           "gs_loss": work_gs_loss, "pipeline": work_pipeline, "eval_set14": work_eval_set14,
           "upscale_large": work_upscale_large}


def main(argv: list[str] | None = None) -> int:
    """Runs ``KIND [flags]`` (default: ``sys.argv[1:]``); the exit status."""
    return cli.console_command("bench_worker.py", define_flags, _main, argv)


def _main(rest: list[str], args: flags.FlagValues) -> int:
    kinds = sorted(WORKERS) + ["serve_jax"]
    if len(rest) != 1 or rest[0] not in kinds:
        raise ValueError(f"give one of {', '.join(kinds)}")
    if rest[0] == "serve_jax":
        serve_jax(args)
        return 0
    result = WORKERS[rest[0]](args)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
