#!/usr/bin/env python3
"""Crops per second of the training stream of a folder source, at 1 and 2 threads.

    python benchmarks/pipeline.py                       # ../shared/data/train, else generated images
    python benchmarks/pipeline.py --train_dir=DIR --seconds=10 --threads=1,2,4
    python benchmarks/pipeline.py --cache_bytes=0       # decode every crop's image from its file

Patch 96, batch 16 (the x4 recipe's HR crops). Prints one JSON object:
``{"source": ..., "patch": 96, "batch": 16, "crops_per_s_1_thread": ..., "crops_per_s_2_threads": ...}``.
Without ``../shared/data/train`` (or ``--train_dir``) it writes 64 random 480x320 PNGs into a
temporary folder and measures those. On a shared machine, compare only numbers taken
back to back.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drn_jax import cli, data, image_io, recipes  # noqa: E402  (after the path is set)

TRAIN_DATA = recipes.shared_data_dir() / "train"


def measure_throughput(source: str | data.Source, patch_size: int, batch_size: int, seconds: float,
                       threads: int | None, *, seed: int = 0,
                       cache_bytes: int = data.DEFAULT_CACHE_BYTES,
                       tfds_data_dir: str | None = None,
                       create: Callable[..., data.TrainDataset] = data.create_train_dataset) -> float:
    """Crops per second the training stream delivers as NumPy, once it is running.

    Opening the source (header scan, decoding into the cache) and the first batches are
    excluded: this is the steady rate the trainer sees. ``threads`` is passed to
    ``create`` (1: what one core supplies); ``cache_bytes=0`` measures decoding every
    crop's image from its file. ``create`` is `drn_jax.data.create_train_dataset` or
    anything with its signature (to compare implementations with the same loop).
    """
    dataset = create(source, patch_size=patch_size, batch_size=batch_size, seed=seed,
                     process_index=0, process_count=1, threads=threads, cache_bytes=cache_bytes,
                     tfds_data_dir=tfds_data_dir)
    batches = dataset.as_numpy_iterator()
    for _ in range(3):  # warm-up: thread start, function tracing, prefetch fill
        next(batches)
    crops, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        crops += len(next(batches)["position"])
    return crops / (time.perf_counter() - start)


def generated_folder(root: pathlib.Path, count: int = 64) -> pathlib.Path:
    """``count`` random 480x320 RGB PNGs (BSD200's size) under ``root``."""
    rng = np.random.default_rng(0)
    for i in range(count):
        image_io.write_png(root / f"{i:03d}.png", rng.integers(0, 256, (320, 480, 3), np.uint8))
    return root


def define_flags(values: flags.FlagValues) -> None:
    """pipeline.py's flags, in `values` (a private `flags.FlagValues`: bench_worker.py and the
    tests import this module)."""
    flags.DEFINE_string("train_dir", None, f"folder(s), comma-separated (default {TRAIN_DATA} if present)",
                        flag_values=values)
    flags.DEFINE_float("seconds", 5.0, "per thread count", flag_values=values)
    flags.DEFINE_list("threads", ["1", "2"], "thread counts", flag_values=values)
    flags.DEFINE_integer("patch", 96, "HR crop side", flag_values=values)
    flags.DEFINE_integer("batch", 16, "crops per batch", flag_values=values)
    flags.DEFINE_integer("cache_bytes", data.DEFAULT_CACHE_BYTES, "the decoded-image cache (0: decode "
                         "every crop's image from its file)", flag_values=values)


def main(argv: list[str] | None = None) -> int:
    """Measures on the command line `argv` (default: ``sys.argv[1:]``) and prints the JSON; the
    exit status."""
    return cli.console_command("pipeline.py", define_flags, _main, argv)


def _main(rest: list[str], args: flags.FlagValues) -> int:
    if rest:
        raise ValueError(f"unexpected argument {rest[0]!r}; give the folders with --train_dir")
    with tempfile.TemporaryDirectory() as scratch:
        if args.train_dir is not None:
            folders = args.train_dir
        elif TRAIN_DATA.is_dir():
            folders = str(TRAIN_DATA)
        else:
            folders = str(generated_folder(pathlib.Path(scratch)))
        source = data.parse_source(f"folder:{folders}")
        result = {"source": source.spec, "patch": args.patch, "batch": args.batch,
                  "cache_bytes": args.cache_bytes}
        for threads in (int(t) for t in args.threads):
            key = f"crops_per_s_{threads}_thread{'s' if threads > 1 else ''}"
            result[key] = round(measure_throughput(source, args.patch, args.batch, args.seconds,
                                                   threads, cache_bytes=args.cache_bytes), 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
