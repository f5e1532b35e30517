"""Exported models against JAX: artifact size, load time and CPU inference time per format.

    python benchmarks/export.py [--pretrained=x4] [--sizes=128,256] [--repeats=3] [--output=export.json]

Each format of :data:`drn_jax.export.FORMATS` is exported from the pretrained model into a
temporary folder, loaded with its own runtime (:func:`drn_jax.export.load`) and timed on one
random LR image per size (batch 1): the first call (which compiles, where the runtime compiles)
apart, then the median of ``--repeats`` calls. JAX itself is timed the same way, with the default
``conv="auto"`` (Winograd on CPU, what eval.py and drn-upscale run) and with ``conv="xla"`` (what
every export computes). One JSON line per row goes to stdout, a Markdown table to stderr, and the
whole result to ``--output``. Timings on a shared CPU are comparable within one run only; the
load average before each row is recorded.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from drn_jax import cli, export, inference, loading  # noqa: E402
from drn_jax.files import write_atomic  # noqa: E402
from drn_jax.machine import machine_description  # noqa: E402


def _time_calls(predict, image: np.ndarray, repeats: int) -> dict[str, float]:
    start = time.perf_counter()
    predict(image)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(image)
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "median_s": statistics.median(times), "min_s": min(times)}


def _row(name: str, load_s: float, size_bytes: int | None, predict, images, repeats: int) -> dict:
    row = {"format": name, "load_s": load_s, "artifact_bytes": size_bytes, "load_average": os.getloadavg()[0]}
    for side, image in images.items():
        row[f"lr{side}"] = _time_calls(predict, image, repeats)
    print(json.dumps(row), flush=True)
    return row


def define_flags(values: flags.FlagValues) -> None:
    """export.py's flags, in `values` (a private `flags.FlagValues`)."""
    flags.DEFINE_string("pretrained", "x4", "a pretrained model name", flag_values=values)
    flags.DEFINE_list("sizes", ["128", "256"], "LR sides", flag_values=values)
    flags.DEFINE_integer("repeats", 3, "timed calls per size, after the first", flag_values=values)
    flags.DEFINE_list("formats", list(export.FORMATS), "the exported formats to compare", flag_values=values)
    flags.DEFINE_string("output", None, "write the result JSON here", flag_values=values)


def measure(name: str, sides: list[int], repeats: int, formats: list[str]) -> list[dict]:
    """The rows: JAX with conv="auto" and "xla", then each format exported from pretrained `name`."""
    rng = np.random.default_rng(0)
    images = {side: rng.random((1, side, side, 3), dtype=np.float32) for side in sides}
    rows = []
    for conv in ("auto", "xla"):
        start = time.perf_counter()
        loaded = loading.load_model(pretrained=name, conv=conv)
        runner = inference.ModelRunner(loaded.model).bind(loaded.variables)
        rows.append(_row(f"jax (conv={conv})", time.perf_counter() - start, None, runner, images, repeats))

    loaded = export.load_for_export(pretrained=name)
    with tempfile.TemporaryDirectory() as scratch:
        for fmt in formats:
            folder = pathlib.Path(scratch) / fmt
            start = time.perf_counter()
            artifact = export.export(loaded, fmt, folder, pretrained_name=name)
            export_s = time.perf_counter() - start
            size = export.artifact_bytes(artifact)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
                start = time.perf_counter()
                predict = export.load(folder)
                load_s = time.perf_counter() - start
            row = _row(fmt, load_s, size, predict, images, repeats)
            row["export_s"] = export_s
            rows.append(row)
    return rows


def table(rows: list[dict], sides: list[int]) -> str:
    """Markdown: each row's artifact size, load time, times per size and ratios to the first row."""
    reference = rows[0]
    header = ("| format | artifact | load | " + " | ".join(f"LR {s}² (first call)" for s in sides)
              + " | " + " | ".join(f"vs JAX auto, {s}²" for s in sides) + " |")
    lines = [header, "|---" * (3 + 2 * len(sides)) + "|"]
    for row in rows:
        size = f"{row['artifact_bytes'] / 1e6:.2f} MB" if row["artifact_bytes"] else "-"
        times = " | ".join(f"{row[f'lr{s}']['median_s']:.2f} s ({row[f'lr{s}']['first_call_s']:.2f} s)" for s in sides)
        ratios = " | ".join(f"{row[f'lr{s}']['median_s'] / reference[f'lr{s}']['median_s']:.2f}×" for s in sides)
        lines.append(f"| {row['format']} | {size} | {row['load_s']:.2f} s | {times} | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default: ``sys.argv[1:]``); the exit status."""
    return cli.console_command("export.py", define_flags, _main, argv)


def _main(rest: list[str], args: flags.FlagValues) -> int:
    if rest:
        raise ValueError(f"unexpected argument {rest[0]!r}; see --help")
    sides = list(dict.fromkeys(int(side) for side in args.sizes))  # in order, once each
    rows = measure(args.pretrained, sides, args.repeats, args.formats)
    result = {"model": args.pretrained, "machine": machine_description(), "repeats": args.repeats,
              "cpu_count": os.cpu_count(),
              "note": "CPU shared with a training run; run under nice -n 19; compare rows within this run only",
              "rows": rows}
    if args.output:
        write_atomic(args.output, json.dumps(result, indent=2) + "\n")
    print(table(rows, sides), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
