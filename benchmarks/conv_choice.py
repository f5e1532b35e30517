#!/usr/bin/env python3
"""Winograd against XLA's convolution on this CPU: the figures behind ``conv="auto"``'s rule.

    python benchmarks/conv_choice.py                       # every case, 5 rounds
    python benchmarks/conv_choice.py --only=infer --rounds=7
    python benchmarks/conv_choice.py --quick               # smoke run, small sizes
    python benchmarks/conv_choice.py --output=FILE         # also append the JSON lines to FILE

For each case, both algorithms are compiled in one process and then called in alternation
(``--rounds`` rounds, one call of each per round, after one warm-up call each), so that load
from other processes falls on both alike; the ratio is of the medians (``xla_s / winograd_s``:
above 1, Winograd is faster). Cases:

* ``infer_F{32,64}``: :class:`drn_jax.inference.ModelRunner` (``DRN.upscale`` with sizes, the
  path of drn-upscale and evaluation) on one tile of ``--tile_shape`` LR pixels (default 336×192, the
  tile drn-upscale cuts a 481×321 photo into at ``--tile 256``) and on the whole 481×321 image, x4, batch 1. F 32
  R 6 is the shipped x4 model's architecture, F 64 R 7 the paper's.
* ``train_F{32,64}``: the full jitted x4 training step (:func:`benchmarks.bench._make_step`:
  GS loss, dual, progressive, Adam) at batch 16, HR 96, the PyTorch peer's sizes.

One JSON line per case on stdout (and in ``--output``), a Markdown table on stderr.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ALGORITHMS = ("winograd", "xla")
MODELS = {32: 6, 64: 7}  # features -> residual modules per block

_ONLY = flags.DEFINE_list("only", ["infer", "train"], "infer, train or both (comma-separated)")
_FEATURES = flags.DEFINE_list("features", ["32", "64"], "feature widths F (32: R 6, 64: R 7)")
_TILE = flags.DEFINE_string("tile_shape", "336x192", "the inference tile, HxW LR pixels")
_IMAGE = flags.DEFINE_string("image", "321x481", "the whole inference image, HxW")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "rounds of calls, one call of each algorithm per round")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: R 1, small sizes, 2 rounds")
_OUTPUT = flags.DEFINE_string("output", None, "also append the JSON lines to this file")


def _alternate(calls: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each call per round, the calls taken in turn (one warm-up call each first)."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def infer_case(features: int, shape: tuple[int, int], rounds: int, quick: bool) -> dict:
    import jax
    import numpy as np

    import bench
    from drn_jax import inference, models

    modules = 1 if quick else MODELS[features]
    lr = np.random.default_rng(0).random((1, *shape, 3), dtype=np.float32)
    calls, compile_s = {}, {}
    for algorithm in ALGORITHMS:
        model = models.DRN(4, features=features, modules_per_block=modules, conv=algorithm)
        variables = jax.device_get(bench._small_init(model))
        runner = inference.ModelRunner(model)
        start = time.perf_counter()
        runner(variables, lr)
        compile_s[algorithm] = time.perf_counter() - start
        calls[algorithm] = lambda runner=runner, variables=variables: runner(variables, lr)
    times = _alternate(calls, rounds)
    return _result(f"infer_F{features}", times, compile_s, features=features, modules_per_block=modules,
                   lr_shape=list(shape), batch=1)


def train_case(features: int, rounds: int, quick: bool) -> dict:
    import jax

    import bench

    calls, compile_s = {}, {}
    for algorithm in ALGORITHMS:
        config = bench._train_config("x4", quick)
        config.model.features = features
        config.model.modules_per_block = 1 if quick else MODELS[features]
        config.model.conv = algorithm
        compiled, state, batch, compile_s[algorithm], _ = bench._make_step(config)
        box = {"state": state}

        def step(compiled=compiled, batch=batch, box=box):
            box["state"], metrics = compiled(box["state"], batch)
            jax.block_until_ready(metrics)

        calls[algorithm] = step
    times = _alternate(calls, rounds)
    return _result(f"train_F{features}", times, compile_s, features=features,
                   modules_per_block=config.model.modules_per_block, batch=config.batch_size,
                   hr_patch=config.data.hr_patch_size)


def _result(case: str, times: dict, compile_s: dict, **info) -> dict:
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"case": case, **info, "rounds": len(times["xla"]),
            **{f"{name}_s": median[name] for name in ALGORITHMS},
            **{f"{name}_min_s": min(times[name]) for name in ALGORITHMS},
            **{f"{name}_compile_s": compile_s[name] for name in ALGORITHMS},
            "xla_over_winograd": median["xla"] / median["winograd"],
            "faster": min(ALGORITHMS, key=median.get), "load_average": os.getloadavg()[0]}


def table(rows: list[dict]) -> str:
    lines = ["| case | size | Winograd | XLA | XLA / Winograd | faster |", "|---|---|---|---|---|---|"]
    for row in rows:
        size = (f"LR {row['lr_shape'][0]}×{row['lr_shape'][1]}" if "lr_shape" in row
                else f"batch {row['batch']}, HR {row['hr_patch']}")
        lines.append(f"| {row['case']} (F {row['features']}, R {row['modules_per_block']}) | {size} | "
                     f"{row['winograd_s']:.3f} s | {row['xla_s']:.3f} s | {row['xla_over_winograd']:.2f}× | "
                     f"{row['faster']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quick = _QUICK.value
    rounds = 2 if quick else _ROUNDS.value
    shapes = [tuple(int(v) for v in text.split("x")) for text in (_TILE.value, _IMAGE.value)]
    if quick:
        shapes = [(48, 32)]
    kinds = set(_ONLY.value)
    rows = []
    for features in (int(f) for f in _FEATURES.value):
        cases = []
        if "infer" in kinds:
            cases += [lambda shape=shape: infer_case(features, shape, rounds, quick) for shape in shapes]
        if "train" in kinds:
            cases.append(lambda: train_case(features, rounds, quick))
        for case in cases:
            row = case()
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if _OUTPUT.value:
                with open(_OUTPUT.value, "a") as file:
                    file.write(line + "\n")
    print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
