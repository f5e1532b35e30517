#!/usr/bin/env python3
"""Crops per second of the TFDS training stream on ImageNet-sized JPEGs, before and after.

    python benchmarks/tfds_jpeg.py                            # BSD200 from ../shared/data/train
    python benchmarks/tfds_jpeg.py --train_dir=DIR --batches=100 --rounds=3 --threads=1,2 --patches=96,192
    python benchmarks/tfds_jpeg.py --tfds_data_dir=DIR   # keep the dataset in DIR, to train on it

It writes a TFDS dataset (`drn_jax.data.tfds_memory`, real TFRecord files) into a
temporary folder: every photo under ``--train_dir`` resized to a 500-pixel long side and
re-encoded as a JPEG of quality 90 (ImageNet's typical size and quality, 4:2:0 chroma).
Then it measures, in one process, crops/s of

* ``before``: the stream as it was before the JPEG path (every record decoded whole by
  ``tf.io.decode_image``, then cropped; records in stored order cut into shuffled blocks),
  rebuilt here from the old code and kept only in this benchmark;
* ``after_k1``, ``after_k4``: `drn_jax.data.create_train_dataset` with
  ``crops_per_image`` 1 and 4 (only the crop windows of a JPEG decoded),
* ``floor``: the decoding alone, a bare tf.data loop over the same files (read, parse,
  JPEG header, decode of one random crop window, batch), without the stream's order,
  transforms, positions or error handling: what K 1 could reach with this decoder,

for each thread count and HR patch, in interleaved rounds (before, K 1, K 4, then the next
setting, ``--rounds`` times) so that load from elsewhere falls on all alike; each cell is the
median of its rounds. It prints one JSON object with the rates, the after/before ratios, and
the host cores one accelerator chip needs at ``--chip_rate`` crops/s (4,000: the x4 step at
batch 64, HR 192 on an H100, docs/performance.md) from the one-thread rates.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from absl import flags
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from drn_jax import cli, data, image_io, recipes  # noqa: E402  (after the path is set)
from drn_jax.data import crops, tfds_memory, tfds_stream  # noqa: E402
from drn_jax.data.base import derive_key  # noqa: E402

TRAIN_PHOTOS = recipes.shared_data_dir() / "train" / "BSD200"
DATASET = "drn_jpeg_bench"


def jpeg_bytes(path: pathlib.Path, long_side: int, quality: int) -> bytes:
    """The photo resized (bicubic) to ``long_side`` pixels on its long side, as a JPEG."""
    image = Image.fromarray(image_io.read_image(path, quiet=True))
    scale = long_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buffer = io.BytesIO()
    image.resize(size, Image.BICUBIC).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def build_dataset(data_dir: str, photos: list[pathlib.Path], *, long_side: int = 500,
                  quality: int = 90) -> str:
    """Prepares ``drn_jpeg_bench`` (split ``train``, feature ``image``) in ``data_dir``;
    returns its source string."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    encoded = {path: jpeg_bytes(path, long_side, quality) for path in set(photos)}
    features = {"image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")}
    records = ((i, {"image": encoded[path]}) for i, path in enumerate(photos))  # bytes as they are
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON alone
        tfds_memory.prepare(DATASET, data_dir, features, records)
    return f"tfds:{DATASET}:train:image"


def create_before(source: str | data.Source, *, patch_size: int, batch_size: int, seed: int,
                  process_index: int, process_count: int, threads: int | None,
                  tfds_data_dir: str | None = None, shuffle_buffer: int = 1024,
                  **unused: Any) -> tfds_stream.TfDataset:
    """The TFDS stream before the JPEG path (from the start of the stream only)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    parsed = data.parse_source(source, tfds_data_dir=tfds_data_dir) if isinstance(source, str) else source
    builder = tfds.builder(parsed.name, data_dir=parsed.data_dir)
    split = tfds.split_for_jax_process(parsed.split, process_index=process_index,
                                       process_count=process_count)
    count = builder.info.splits[split].num_examples
    records = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={parsed.key: tfds.decode.SkipDecoding()})
    records = records.map(lambda example: example[parsed.key])
    buffer = max(1, min(shuffle_buffer, count))
    blocks_per_epoch = -(-count // buffer)
    order_key = derive_key(seed, process_index, "order")
    crop_key = derive_key(seed, process_index, "crop")

    def permute(epoch, block_index, block):
        size = tf.shape(block, out_type=tf.int64)[0]
        order = tf.numpy_function(
            lambda e, b, s: crops.permutation(order_key, int(e) * blocks_per_epoch + int(b), int(s)),
            [epoch, block_index, size], tf.int64, stateful=False)
        return tf.gather(block, order)

    def epoch_records(epoch):
        shuffled = records.batch(buffer).enumerate().map(
            lambda block_index, block: permute(epoch, block_index, block)).unbatch()
        return shuffled.enumerate().map(lambda i, record: (epoch * count + i, record))

    def decode(position, record):
        return position, tf.io.decode_image(record, channels=3, dtype=tf.uint8, expand_animations=False)

    def crop_image(position, pixels):
        hr = tf.numpy_function(lambda p, x: _old_crop(x, crop_key, int(p), patch_size),
                               [position, pixels], tf.uint8, stateful=False)
        return {"hr": tf.ensure_shape(hr, [patch_size, patch_size, 3]), "position": position}

    parallel = tf.data.AUTOTUNE if threads is None else threads
    dataset = tf.data.Dataset.counter(0, dtype=tf.int64).flat_map(epoch_records)
    dataset = dataset.map(decode, num_parallel_calls=parallel, deterministic=True)
    dataset = dataset.filter(lambda position, pixels: tf.reduce_min(tf.shape(pixels)[:2]) >= patch_size)
    dataset = dataset.map(crop_image, num_parallel_calls=parallel, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return tfds_stream.TfDataset(dataset.with_options(tfds_stream.stream_options(tf, threads)), None, None)


def _old_crop(image: Any, key: int, position: int, patch: int) -> Any:
    """The crop as the stream made it before the JPEG path: the window under its transform,
    copied on the host (per channel when the transform reorders pixels, which NumPy copies
    3-4x faster than 3 bytes at a time)."""
    import numpy as np

    top, left, transform = crops.crop_window(key, position, *image.shape[:2], patch)
    view = crops.dihedral(image[top:top + patch, left:left + patch], transform)
    out = np.empty((patch, patch, 3), image.dtype)
    if transform in (0, 6):
        out[...] = view
    else:
        for channel in range(3):
            out[..., channel] = view[..., channel]
    return out


def create_floor(source: str | data.Source, *, patch_size: int, batch_size: int,
                 threads: int | None, tfds_data_dir: str | None = None,
                 **unused: Any) -> tfds_stream.TfDataset:
    """The decoding floor of K 1: read, parse, one random window decoded from each JPEG."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    parsed = data.parse_source(source, tfds_data_dir=tfds_data_dir) if isinstance(source, str) else source
    builder = tfds.builder(parsed.name, data_dir=parsed.data_dir)
    files = [str(f.filename) for f in builder.info.splits[parsed.split].file_instructions]
    spec = {parsed.key: tf.io.FixedLenFeature([], tf.string)}

    def decode(position, serialized):
        record = tf.io.parse_single_example(serialized, spec)[parsed.key]
        spans = tf.image.extract_jpeg_shape(record)[:2] - patch_size + 1
        corner = tf.random.stateless_uniform([2], [position, 0], 0, 1 << 30, tf.int32) % spans
        window = tf.concat([corner, [patch_size, patch_size]], 0)
        return {"hr": tf.image.decode_and_crop_jpeg(record, window, channels=3),
                "position": position}

    parallel = tf.data.AUTOTUNE if threads is None else threads
    dataset = tf.data.TFRecordDataset(files).repeat().enumerate()
    dataset = dataset.map(decode, num_parallel_calls=parallel, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return tfds_stream.TfDataset(dataset.with_options(tfds_stream.stream_options(tf, threads)), None, None)


# --variants name -> the stream's constructor (create_train_dataset's signature).
VARIANTS: dict[str, Callable[..., Any]] = {
    "before": create_before,
    "after_k1": functools.partial(data.create_train_dataset, crops_per_image=1),
    "after_k4": functools.partial(data.create_train_dataset, crops_per_image=4),
    "floor": create_floor,
}


def measure(source: data.Source, create: Callable[..., Any], patch: int, batch: int,
            threads: int, batches: int) -> tuple[float, float]:
    """(crops per wall second, crops per CPU second of this process) of a running stream.

    The CPU rate counts every thread of the process (tf.data's, and this loop's), so it is
    the rate of one fully used core, whatever else the machine runs: on a shared machine it
    is the fairer figure. The first 3 batches (tracing, thread start) are not counted.
    """
    iterator = create(source, patch_size=patch, batch_size=batch, seed=0, process_index=0,
                      process_count=1, threads=threads).as_numpy_iterator()
    for _ in range(3):
        next(iterator)
    cpu, wall, crops_seen = time.process_time(), time.perf_counter(), 0
    for _ in range(batches):
        crops_seen += len(next(iterator)["position"])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    del iterator
    return crops_seen / wall, crops_seen / max(cpu, 1e-9)


def define_flags(values: flags.FlagValues) -> None:
    """tfds_jpeg.py's flags, in `values` (a private `flags.FlagValues`)."""
    flags.DEFINE_list("train_dir", [str(TRAIN_PHOTOS)], "folder(s) of photos", flag_values=values)
    flags.DEFINE_integer("batches", 100, "timed batches per cell and round", flag_values=values)
    flags.DEFINE_integer("rounds", 3, "rounds of every cell, interleaved", flag_values=values)
    flags.DEFINE_list("threads", ["1", "2"], "thread counts", flag_values=values)
    flags.DEFINE_list("patches", ["96", "192"], "HR crop sides", flag_values=values)
    flags.DEFINE_integer("batch", 16, "crops per batch", flag_values=values)
    flags.DEFINE_list("variants", list(VARIANTS), "streams to measure", flag_values=values)
    flags.DEFINE_float("chip_rate", 4000.0, "crops/s one accelerator chip consumes", flag_values=values)
    flags.DEFINE_integer("long_side", 500, "the photos' long side, pixels", flag_values=values)
    flags.DEFINE_integer("quality", 90, "JPEG quality", flag_values=values)
    flags.DEFINE_integer("copies", 8, "records per photo: ImageNet's epochs are long, and tf.data rebuilds "
                         "each epoch's reading pipeline, which 200-record epochs would weigh far more than "
                         "ImageNet's 1.28M do", flag_values=values)
    flags.DEFINE_string("tfds_data_dir", None, "prepare the dataset here and keep it (e.g. to train on it with "
                        "--config.data.tfds_data_dir); default: a temporary folder", flag_values=values)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default: ``sys.argv[1:]``); the exit status."""
    return cli.console_command("tfds_jpeg.py", define_flags, _main, argv)


def _main(rest: list[str], args: flags.FlagValues) -> int:
    if rest:
        raise ValueError(f"unexpected argument {rest[0]!r}; give the photo folders with --train_dir")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    photos = [path for folder in args.train_dir for path in image_io.list_images(folder)]
    photos = photos * args.copies
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    variants = {name: VARIANTS[name] for name in args.variants}
    threads, patches = [int(t) for t in args.threads], [int(p) for p in args.patches]
    cells = [(t, patch, name) for t in threads for patch in patches for name in variants]
    rates: dict[tuple[int, int, str], list[tuple[float, float]]] = {cell: [] for cell in cells}
    loads = [os.getloadavg()[0]]
    kept = contextlib.nullcontext(args.tfds_data_dir) if args.tfds_data_dir else tempfile.TemporaryDirectory()
    with kept as data_dir:
        spec = build_dataset(data_dir, photos, long_side=args.long_side, quality=args.quality)
        source = data.parse_source(spec, tfds_data_dir=data_dir)
        for _ in range(args.rounds):  # every cell once per round: load falls on all alike
            for t, patch, name in cells:
                rates[t, patch, name].append(measure(source, variants[name], patch, args.batch, t, args.batches))
            loads.append(os.getloadavg()[0])
    result: dict[str, Any] = {
        "dataset": f"{len(photos)} records ({args.copies} per photo) of {','.join(args.train_dir)}, "
                   f"{args.long_side}-pixel long side, JPEG quality {args.quality}, as TFDS TFRecords",
        "batch": args.batch, "batches": args.batches, "rounds": args.rounds,
        "load_average": [round(load, 1) for load in loads],
        "note": "medians of rounds interleaved in one process. crops_per_cpu_s: crops per CPU "
                "second of the process, i.e. per fully used core; crops_per_s: per wall second, "
                "which on a shared CPU (see load_average) shows the share it got, not the "
                "machine. Compare ratios within this run.",
        **summarise(rates, cells, threads, patches, list(variants), args.chip_rate),
    }
    print(json.dumps(result), flush=True)
    return 0


def summarise(rates: dict[tuple[int, int, str], list[tuple[float, float]]], cells: list[tuple[int, int, str]],
              threads: list[int], patches: list[int], variants: list[str], chip_rate: float) -> dict[str, dict]:
    """Each cell's median rates (``<variant>/hr<patch>/<threads>t``), its ratio to ``before``,
    and the host cores per chip of each variant and patch, from its best per-core rate."""
    result: dict[str, dict] = {"crops_per_cpu_s": {}, "crops_per_s": {}, "ratio_to_before": {}, "cores_per_chip": {}}
    for t, patch, name in cells:
        cell = f"{name}/hr{patch}/{t}t"
        result["crops_per_s"][cell] = round(statistics.median(r[0] for r in rates[t, patch, name]), 1)
        result["crops_per_cpu_s"][cell] = round(statistics.median(r[1] for r in rates[t, patch, name]), 1)
    for t, patch, name in cells:
        if name != "before" and "before" in variants:
            cell = f"{name}/hr{patch}/{t}t"
            ratio = result["crops_per_cpu_s"][cell] / result["crops_per_cpu_s"][f"before/hr{patch}/{t}t"]
            result["ratio_to_before"][cell] = round(ratio, 2)
    for patch in patches:
        for name in variants:  # from every thread count's CPU rate: the best use of a core
            per_core = max(result["crops_per_cpu_s"][f"{name}/hr{patch}/{t}t"] for t in threads)
            result["cores_per_chip"][f"{name}/hr{patch}"] = round(chip_rate / per_core, 2)
    return result


if __name__ == "__main__":
    sys.exit(main())
