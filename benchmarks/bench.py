#!/usr/bin/env python3
"""drn-jax performance suite: one JSON line per measurement on stdout, a Markdown table on stderr.

    python benchmarks/bench.py                               # everything
    python benchmarks/bench.py --only=train_x4,infer_x4      # a subset
    python benchmarks/bench.py --compare_torch=.venv-torch/bin/python   # + the PyTorch peer, A/B
    python benchmarks/bench.py --quick                       # smoke run (few steps, small sizes)
    python benchmarks/bench.py --output_dir=DIR              # also DIR/bench.jsonl and DIR/bench.md

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
* ``eval_set14``: wall time and XLA compilations (counted with ``jax.monitoring``) of a pass over
  Set14 at x4 as eval.py makes it: LR generation, the Bicubic and DRN rows, scoring (random
  F 64 R 7 model).
* ``variants_x4``: the x4 step against each thing tried on it (:data:`VARIANTS`), in lockstep.
* ``upscale_large``: drn-upscale's tiled path on a 4096² random image at x4 (small random DRN):
  peak RSS against the output's size (the memory bound of the tiling).

Every benchmark runs in a subprocess of its own (``bench_worker.py``); ``peak_rss_mb`` is that
process's peak resident memory. With ``--compare_torch PYTHON`` the training and inference
benchmarks alternate JAX and PyTorch runs (``PYTHON ../shared/peers/torch_drn.py bench ...``,
2 threads, channels-last for inference) ``--repeats`` times and report ``torch_s / jax_s`` (> 1:
JAX is faster), then step a warm JAX and a warm PyTorch server (``bench_peer.py``) in turn.
Load from other processes slows both sides alike only when they alternate, so compare within
one run.

The modules beside it: ``bench_programs.py`` (what is timed), ``bench_worker.py`` and
``bench_peer.py`` (the two sides' processes), ``bench_process.py`` (starting and reading them),
``bench_compare.py`` (the comparisons), ``bench_report.py`` (the table and the files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable

# Every child quiets TensorFlow's C++ logs as the workers always did; set before JAX's import
# (through drn_jax.cli), which would make it 1 for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from bench_compare import Variant, alternate_runs, compare_variants, lockstep  # noqa: E402
from bench_process import REPO, TORCH_PEER, child_env, jax_cmd, run_json, torch_cmd  # noqa: E402
from bench_report import machine, markdown, write  # noqa: E402

from drn_jax import cli, recipes  # noqa: E402

TRAIN_DATA = recipes.shared_data_dir() / "train"
SET14 = recipes.shared_data_dir() / "benchmark"

MALLOCS = ["default", "tuned"]  # glibc's own settings, or bench_process.TUNED_MALLOC

# What was tried on the x4 training step (docs/performance.md): name -> (serve_jax options,
# environment changes; None removes a variable). Each runs in lockstep against the default.
VARIANTS: dict[str, Variant] = {
    "conv_direct": (["--conv", "xla"], {}),
    "malloc_default": ([], {"GLIBC_TUNABLES": None}),
    "bfloat16": (["--dtype", "bfloat16"], {}),
    "remat": (["--remat"], {}),
    "xla_onednn": ([], {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}),
    "xla_fast_math": ([], {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}),
    "xla_vector_width_512": ([], {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"}),
}


@dataclasses.dataclass
class Suite:
    """One run of the suite: its settings (from the flags) and the records emitted so far."""

    quick: bool
    steps: int
    warmup: int
    repeats: int
    timeout: float
    compare_torch: str | None
    lockstep: int
    malloc: str
    torch_malloc: str
    infer_malloc: str
    pipeline_seconds: float
    variants: list[str]
    records: list[dict] = dataclasses.field(default_factory=list)

    def emit(self, record: dict) -> None:
        """Keeps `record` and prints it as one JSON line."""
        self.records.append(record)
        print(json.dumps(record), flush=True)

    @property
    def quick_flag(self) -> list[str]:
        return ["--quick"] if self.quick else []

    @property
    def common(self) -> list[str]:
        """The options of every timed worker."""
        return ["--steps", str(self.steps), "--warmup", str(self.warmup), *self.quick_flag]

    def measure(self, kind: str, *extra: str) -> dict:
        """One JAX worker's record, under the JAX malloc settings."""
        return run_json(jax_cmd(kind, *extra), env=child_env(self.malloc), timeout=self.timeout)[0]

    def alternate(self, name: str, cmd: list[str], tcmd: list[str] | None, malloc: str) -> dict:
        """`name`'s JAX runs (under `malloc`), alternating with the peer's `tcmd` if given."""
        return alternate_runs(name, cmd, tcmd, repeats=self.repeats, env=child_env(malloc),
                              torch_env=child_env(self.torch_malloc), timeout=self.timeout,
                              malloc=self.malloc, torch_malloc=self.torch_malloc)

    def lockstep_fields(self, argv: list[str]) -> dict:
        """With the peer: the lockstep servers' fields for the same worker `argv`, else none."""
        if not (self.compare_torch and self.lockstep):
            return {}
        return lockstep(argv, self.compare_torch, argv, self.lockstep, child_env(self.malloc),
                        child_env(self.torch_malloc))


def run_train(suite: Suite, name: str) -> None:
    """train_x4, train_x8, train_tiny: the training step's runs (with the peer's, for x4 and x8)."""
    variant = name.split("_", 1)[1]
    tcmd = None
    if suite.compare_torch and variant in ("x4", "x8"):
        feats, blocks, batch = ("64", "2", "4") if suite.quick else ("64", "7", "16")
        tcmd = torch_cmd(suite.compare_torch, "train", [
            "--scale", str(4 if variant == "x4" else 8), "--feats", feats, "--blocks", blocks,
            "--batch", batch, "--patch", "96", "--steps", str(suite.steps), "--warmup", str(suite.warmup)])
    record = suite.alternate(name, jax_cmd("train", "--config_name", variant, *suite.common), tcmd, suite.malloc)
    record["images_per_s"] = record["batch"] / record["median_s"]
    if "torch_median_s" in record:
        record["torch_images_per_s"] = record["batch"] / record["torch_median_s"]
    if tcmd is not None:
        record.update(suite.lockstep_fields(["--mode", "train", "--config_name", variant, *suite.quick_flag]))
    suite.emit(record)


def run_infer(suite: Suite, name: str) -> None:
    """infer_x4_<side>: the x4 upscale of one LR image per side (with the peer's)."""
    for size in ((64, 128) if suite.quick else (128, 256)):
        tcmd = None
        if suite.compare_torch:
            tcmd = torch_cmd(suite.compare_torch, "infer", [
                "--scale", "4", "--feats", "64", "--blocks", "2" if suite.quick else "7",
                "--lr-size", str(size), "--steps", str(suite.steps), "--warmup", str(suite.warmup),
                "--channels-last"])
        cmd = jax_cmd("infer", "--lr_size", str(size), *suite.common)
        record = suite.alternate(f"{name}_{size}", cmd, tcmd, suite.infer_malloc)
        record["malloc"] = suite.infer_malloc
        if tcmd is not None:
            record.update(suite.lockstep_fields(["--mode", "infer", "--lr_size", str(size), *suite.quick_flag]))
        suite.emit(record)


def run_pipeline(suite: Suite, name: str) -> None:
    """The stream's crops/s with 1 and 2 threads, against the x4 step's images/s."""
    if not TRAIN_DATA.is_dir():
        suite.emit({"bench": name, "skipped": f"{TRAIN_DATA} not found"})
        return
    seconds = "3" if suite.quick else str(suite.pipeline_seconds)
    record = suite.measure("pipeline", "--train_dir", str(TRAIN_DATA), "--seconds", seconds)
    step = next((r for r in suite.records if r.get("bench") == "train_x4"), None)
    if step is None:  # the rate the x4 step consumes, measured here if not run above
        step = suite.measure("train", "--config_name", "x4", *suite.common)
        step["images_per_s"] = step["batch"] / step["median_s"]
    record["x4_step_images_per_s"] = step["images_per_s"]
    record["one_thread_over_step"] = record["crops_per_s_1_thread"] / step["images_per_s"]
    suite.emit({"bench": name, **record})


def run_eval_set14(suite: Suite, name: str) -> None:
    """A Set14 x4 pass as eval.py makes it: wall time and compilations."""
    if not (SET14 / "Set14" / "HR").is_dir():
        suite.emit({"bench": name, "skipped": f"{SET14}/Set14/HR not found"})
        return
    suite.emit({"bench": name, **suite.measure("eval_set14", "--data_dir", str(SET14), *suite.quick_flag)})


def run_variants(suite: Suite, name: str) -> None:
    """variant_<name>: the x4 step against each chosen variant, in lockstep."""
    argv = ["--mode", "train", "--config_name", "x4", *suite.quick_flag]
    for record in compare_variants(argv, VARIANTS, suite.variants, suite.lockstep or 6, child_env(suite.malloc)):
        suite.emit(record)


def run_upscale_large(suite: Suite, name: str) -> None:
    """drn-upscale's tiled path on a large image: peak RSS against the output."""
    side = "512" if suite.quick else "4096"
    suite.emit({"bench": name, **suite.measure("upscale_large", "--lr_size", side)})


def _worker(kind: str) -> Callable[[Suite, str], None]:
    """A benchmark that is one worker's record."""
    return lambda suite, name: suite.emit({"bench": name, **suite.measure(kind, *suite.common)})


# The catalogue: --only name -> what runs it, in the order they run.
BENCHMARKS: dict[str, Callable[[Suite, str], None]] = {
    "train_x4": run_train, "train_x8": run_train, "train_tiny": run_train,
    "breakdown_x4": _worker("breakdown"), "infer_x4": run_infer, "gs_loss": _worker("gs_loss"),
    "pipeline": run_pipeline, "eval_set14": run_eval_set14, "variants_x4": run_variants,
    "upscale_large": run_upscale_large,
}


def define_flags(values: flags.FlagValues) -> None:
    """bench.py's flags, in `values` (a private `flags.FlagValues`: conv_choice.py imports this module)."""
    flags.DEFINE_list("only", [], f"a subset of: {', '.join(BENCHMARKS)} (default: all)", flag_values=values)
    flags.DEFINE_boolean("quick", False, "smoke run: small models, few steps", flag_values=values)
    flags.DEFINE_string("compare_torch", None, "python of a venv with torch: alternate with the PyTorch peer",
                        flag_values=values)
    flags.DEFINE_integer("steps", 0, "timed steps per run (default 10; quick 3)", flag_values=values)
    flags.DEFINE_integer("warmup", 2, "untimed steps before them", flag_values=values)
    flags.DEFINE_integer("repeats", 0, "alternating runs per compared benchmark (default 3; quick 1)",
                         flag_values=values)
    flags.DEFINE_float("pipeline_seconds", 10.0, "pipeline: seconds per thread count", flag_values=values)
    flags.DEFINE_enum("malloc", "tuned", MALLOCS, "glibc malloc settings for the JAX processes "
                      "(see bench_process.TUNED_MALLOC)", flag_values=values)
    flags.DEFINE_enum("torch_malloc", "default", MALLOCS, "the same for the PyTorch peer", flag_values=values)
    flags.DEFINE_enum("infer_malloc", "default", MALLOCS, "the same for the JAX inference benchmarks: with the "
                      "tuned settings (no mmap, no trim) each call's freed XLA temp buffer (832 MB at LR 256²) "
                      "is not reused and the peak grows by it every other call", flag_values=values)
    flags.DEFINE_integer("lockstep", 10, "with --compare_torch: also alternate this many single steps of two "
                         "warm servers (robust to load from other processes); 0 turns it off", flag_values=values)
    flags.DEFINE_list("variants", [], f"variants_x4: a subset of {', '.join(VARIANTS)} (default: all)",
                      flag_values=values)
    flags.DEFINE_float("timeout", 1800.0, "per subprocess, seconds", flag_values=values)
    flags.DEFINE_string("output_dir", None, "also write bench.jsonl and bench.md (the table) here",
                        flag_values=values)


def _chosen(values: list[str], known, what: str) -> list[str]:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(known)}")
    return values or list(known)


def run_suite(suite: Suite, names: list[str]) -> list[dict]:
    """Runs the benchmarks `names` in turn, between a machine record before and after; a
    benchmark whose process fails leaves an error record and the others run."""
    suite.emit({"bench": "machine", **machine(), "malloc": suite.malloc, "torch_malloc": suite.torch_malloc})
    for name in names:
        try:
            BENCHMARKS[name](suite, name)
        except RuntimeError as err:
            suite.emit({"bench": name, "error": str(err)[-2000:]})
    suite.emit({"bench": "machine_after", "loadavg_1min": os.getloadavg()[0]})
    return suite.records


def main(argv: list[str] | None = None) -> int:
    """Runs the suite on the command line `argv` (default: ``sys.argv[1:]``); the exit status."""
    return cli.console_command("bench.py", define_flags, _main, argv)


def _main(rest: list[str], values: flags.FlagValues) -> int:
    if rest:
        raise ValueError(f"unexpected argument {rest[0]!r}; benchmarks are chosen with --only")
    names = _chosen(values.only, BENCHMARKS, "benchmark(s)")
    variants = _chosen(values.variants, VARIANTS, "variant(s)")
    if values.compare_torch and not TORCH_PEER.is_file():
        raise FileNotFoundError(f"--compare_torch: {TORCH_PEER} not found")
    suite = Suite(quick=values.quick, steps=values.steps or (3 if values.quick else 10), warmup=values.warmup,
                  repeats=values.repeats or (1 if values.quick else 3), timeout=values.timeout,
                  compare_torch=values.compare_torch, lockstep=values.lockstep, malloc=values.malloc,
                  torch_malloc=values.torch_malloc, infer_malloc=values.infer_malloc,
                  pipeline_seconds=values.pipeline_seconds, variants=variants)
    records = run_suite(suite, names)
    table = markdown(records)
    print(table, file=sys.stderr)
    if values.output_dir:
        write(values.output_dir, records, table)
    return 0


def __getattr__(name: str):
    # conv_choice.py reaches these through ``import bench``; they live in bench_programs now.
    moved = {"_train_config": "train_config", "_make_step": "make_step", "_small_init": "small_init"}
    if name not in moved:
        raise AttributeError(f"module 'bench' has no attribute {name!r}")
    import bench_programs

    return getattr(bench_programs, moved[name])


if __name__ == "__main__":
    sys.exit(main())
