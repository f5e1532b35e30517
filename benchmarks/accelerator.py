#!/usr/bin/env python3
"""The accelerator benchmark: x4/x8 training steps and x4 inference on one GPU or TPU, in one process.

    python benchmarks/accelerator.py --output=accelerator.jsonl
    python benchmarks/accelerator.py --torch_peer=../shared/peers/torch_drn.py   # + the peer on CUDA
    python benchmarks/accelerator.py --quick          # smoke run on any backend, tiny sizes
    python benchmarks/accelerator.py --count_flops --output=flops.jsonl   # on CPU
    python benchmarks/accelerator.py --table=accelerator.jsonl,flops.jsonl  # the Markdown table

The paper's model (F 64, R 7) with bfloat16 computation and float32 loss and parameters
(``config.model.dtype = "bfloat16"``), plus float32 rows for comparison. Every case is compiled
once and timed over ``--steps`` calls after warm-up; the FLOPs of a call are XLA's own count of
the lowered program (``lowered.cost_analysis()``, before the convolutions become cuDNN calls that
the compiled program's analysis skips), so the achieved TFLOP/s and the fraction of the chip's
dense bfloat16 peak come from the program that ran. One JSON line per case on stdout (and appended
to ``--output``), each written as soon as it is measured so that a run cut short keeps what it did.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402  (after the environment and the path are set)
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402
from bench_programs import lower_step, lowered_flops, make_step, time_step, timeit, train_config  # noqa: E402

from drn_jax import cli, models  # noqa: E402

# Dense bfloat16 peak FLOP/s from the vendors' data sheets (no sparsity), by `device_kind` prefix.
BF16_PEAKS = {"NVIDIA H100": 989.4e12, "NVIDIA H200": 989.4e12, "NVIDIA A100": 312e12}


def bf16_peak(kind: str) -> float | None:
    return next((peak for prefix, peak in BF16_PEAKS.items() if kind.startswith(prefix)), None)


def _case_config(scale: int, batch: int, patch: int, dtype: str, quick: bool, conv: str = "auto"):
    config = train_config(f"x{scale}", quick)
    config.batch_size, config.data.hr_patch_size, config.model.dtype = batch, patch, dtype
    config.model.conv = conv
    return config


def train_case(scale: int, batch: int, patch: int, dtype: str, quick: bool, warmup: int, steps: int) -> dict:
    """The x`scale` training step at `batch` × `patch`² in `dtype`: compile and median seconds."""
    config = _case_config(scale, batch, patch, dtype, quick)
    compiled, state, hr_batch, compile_s, flops = make_step(config)
    times, _ = time_step(compiled, state, hr_batch, warmup=warmup, steps=steps)
    return {"case": f"train_x{scale}", "batch": batch, "hr_patch": patch, "dtype": dtype,
            "features": config.model.features, "modules_per_block": config.model.modules_per_block,
            "compile_s": compile_s, "median_s": statistics.median(times), "min_s": min(times),
            "images_per_s": batch / statistics.median(times), "flops_per_call": flops}


def _lower_infer(lr_size: int, batch: int, dtype: str, quick: bool, conv: str = "auto"):
    model = models.DRN(4, modules_per_block=2 if quick else 7, dtype=jnp.dtype(dtype), conv=conv)
    lr = jax.random.uniform(jax.random.key(1), (batch, lr_size, lr_size, 3), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), lr)
    return jax.jit(lambda v, x: model.apply(v, x, method="upscale")).lower(variables, lr), variables, lr


def infer_case(lr_size: int, batch: int, dtype: str, quick: bool, warmup: int, steps: int) -> dict:
    """The x4 upscale of `batch` LR images of `lr_size`² in `dtype`: compile and median seconds."""
    start = time.perf_counter()
    lowered, variables, lr = _lower_infer(lr_size, batch, dtype, quick)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    times = timeit(lambda: jax.block_until_ready(compiled(variables, lr)), warmup=warmup, steps=steps)
    return {"case": "infer_x4", "lr_size": lr_size, "batch": batch, "dtype": dtype,
            "compile_s": compile_s, "median_s": statistics.median(times), "min_s": min(times),
            "images_per_s": batch / statistics.median(times),
            "flops_per_call": lowered_flops(lowered)}


def torch_cases(peer_path: str, quick: bool, warmup: int, steps: int) -> list[dict]:
    """The PyTorch peer's own model, pyramid and loss on CUDA (bf16 autocast, channels-last)."""
    import torch  # the peer's side only: drn-jax does not depend on it
    from bench_peer import load_torch_peer

    peer = load_torch_peer(peer_path)
    device = torch.device("cuda")
    blocks = 2 if quick else 7
    records = []

    def timed(fn):
        def run():
            fn()
            torch.cuda.synchronize()
        return timeit(run, warmup=warmup, steps=steps)

    for scale, batch, patch in ((4, 16, 96), (8, 16, 96), (4, 64, 192)):
        if quick:
            batch, patch = min(batch, 4), 32
        model = peer.DRN(scale, 64, blocks).to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        hr = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=torch.channels_last)

        def train_step():
            lr, levels = peer.make_pyramid(hr, scale)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = peer.drn_loss(model, lr, levels, 2.0, "pred")
            loss.float().backward()
            opt.step()

        times = timed(train_step)
        records.append({"case": f"torch_train_x{scale}", "batch": batch, "hr_patch": patch, "dtype": "bf16 autocast",
                        "median_s": statistics.median(times), "images_per_s": batch / statistics.median(times)})
    model = peer.DRN(4, 64, blocks).to(device).to(memory_format=torch.channels_last).eval()
    for size in (128, 256):
        x = torch.rand(1, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

        def infer():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)[-1]

        times = timed(infer)
        records.append({"case": "torch_infer_x4", "lr_size": size, "batch": 1, "dtype": "bf16 autocast",
                        "median_s": statistics.median(times)})
    return records


def _key(record: dict) -> tuple:
    return (record["case"].replace("torch_", ""), record.get("batch"), record.get("hr_patch", record.get("patch")),
            record.get("lr_size"))


def table(timings_path: str, flops_path: str) -> str:
    """Markdown of a timing run's and a --count_flops run's JSON lines: each JAX case's time,
    images/s, TFLOP/s and fraction of the bf16 peak, beside the PyTorch peer's time for the same
    sizes."""
    timings = [json.loads(line) for line in open(timings_path) if line.strip()]
    flops = {(_key(r), r.get("dtype")): r["flops_per_call"] for r in map(json.loads, open(flops_path))
             if r.get("flops_per_call")}
    machine = next(r for r in timings if r["case"] == "machine")
    torch = {_key(r): r for r in timings if r["case"].startswith("torch_") and "median_s" in r}
    peak = bf16_peak(machine["device_kind"])
    rows = [f"{machine['device_kind']}, jax {machine['jax']}; peak dense bf16 {peak / 1e12:.0f} TFLOP/s" if peak
            else machine["device_kind"], "",
            "| case | dtype | JAX time | images/s | TFLOP/s | of bf16 peak | PyTorch peer (bf16 autocast) | peer/JAX |",
            "|---|---|---|---|---|---|---|---|"]
    for r in timings:
        if r["case"] == "machine" or r["case"].startswith("torch") or "median_s" not in r:
            continue
        size = (f"batch {r['batch']}, HR {r['hr_patch']}" if "hr_patch" in r
                else f"LR {r['lr_size']}², batch {r['batch']}")
        count = flops.get((_key(r), r["dtype"]))
        tflops = count / r["median_s"] / 1e12 if count else None
        peer = torch.get(_key(r)) if r["dtype"] == "bfloat16" else None
        rows.append(" | ".join([
            f"| {r['case']} ({size})", r["dtype"], f"{1000 * r['median_s']:.2f} ms", f"{r['images_per_s']:.0f}",
            f"{tflops:.1f}" if tflops else "-", f"{100 * tflops * 1e12 / peak:.1f}%" if tflops and peak else "-",
            f"{1000 * peer['median_s']:.2f} ms" if peer else "-",
            f"{peer['median_s'] / r['median_s']:.2f}x |" if peer else "- |"]))
    return "\n".join(rows)


def define_flags(values: flags.FlagValues) -> None:
    """accelerator.py's flags, in `values` (a private `flags.FlagValues`)."""
    flags.DEFINE_string("output", None, "also append the JSON lines to this file", flag_values=values)
    flags.DEFINE_integer("steps", 20, "timed calls per case", flag_values=values)
    flags.DEFINE_integer("warmup", 3, "untimed calls before them", flag_values=values)
    flags.DEFINE_boolean("quick", False, "R 2, small sizes: a smoke run", flag_values=values)
    flags.DEFINE_boolean("count_flops", False, "only lower every case, with conv='xla' (the direct "
                         "convolutions a GPU runs, not the CPU Winograd kernels), and print XLA's FLOP count "
                         "(run it on CPU: GPU backends may not count the lowered program)", flag_values=values)
    flags.DEFINE_string("torch_peer", None, "torch_drn.py: also time the peer on CUDA", flag_values=values)
    flags.DEFINE_list("table", [], "TIMINGS,FLOPS: print the Markdown table of a timing run's and a "
                      "--count_flops run's JSON lines, and exit", flag_values=values)


def cases(small: bool) -> list[tuple[str, dict]]:
    """(kind, options) of every case, bfloat16 and float32; `small`: the --quick sizes."""
    return [
        ("train", dict(scale=4, batch=16, patch=96 if not small else 32, dtype="bfloat16")),
        ("train", dict(scale=4, batch=16, patch=96 if not small else 32, dtype="float32")),
        ("train", dict(scale=8, batch=16, patch=96 if not small else 32, dtype="bfloat16")),
        ("train", dict(scale=4, batch=64 if not small else 4, patch=192 if not small else 32, dtype="bfloat16")),
        ("infer", dict(lr_size=128 if not small else 16, batch=1, dtype="bfloat16")),
        ("infer", dict(lr_size=256 if not small else 24, batch=1, dtype="bfloat16")),
        ("infer", dict(lr_size=256 if not small else 24, batch=1, dtype="float32")),
    ]


def _machine() -> dict:
    device = jax.devices()[0]
    info = {"case": "machine", "backend": jax.default_backend(), "device_kind": device.device_kind,
            "devices": jax.device_count(), "jax": jax.__version__}
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def count_flops(emit: Callable[[dict], None], small: bool) -> None:
    """XLA's FLOP count of every case, lowered with conv="xla": the convolutions the GPU runs,
    not CPU Winograd's."""
    for kind, options in cases(small):
        if kind == "train":
            lowered = lower_step(_case_config(**options, quick=small, conv="xla"))[0]
        else:
            lowered = _lower_infer(**options, quick=small, conv="xla")[0]
        emit({"case": f"{kind}_x{options.get('scale', 4)}", **options, "flops_per_call": lowered_flops(lowered)})


def time_cases(emit: Callable[[dict], None], small: bool, warmup: int, steps: int) -> None:
    """Every case timed, with its achieved TFLOP/s and share of the bf16 peak; a failing case
    is an error record, and the others still run."""
    peak = bf16_peak(jax.devices()[0].device_kind)
    for kind, options in cases(small):
        try:
            if kind == "train":
                record = train_case(**options, quick=small, warmup=warmup, steps=steps)
            else:
                record = infer_case(**options, quick=small, warmup=warmup, steps=steps)
        except Exception as err:  # one failing case should not lose the others
            emit({"case": kind, **options, "error": f"{type(err).__name__}: {err}"[-1500:],
                  "traceback": traceback.format_exc()[-3000:]})
            continue
        if record["flops_per_call"]:
            achieved = record["flops_per_call"] / record["median_s"]
            record["achieved_tflops"] = achieved / 1e12
            if peak:
                record["fraction_of_bf16_peak"] = achieved / peak
        emit(record)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default: ``sys.argv[1:]``); the exit status."""
    return cli.console_command("accelerator.py", define_flags, _main, argv)


def _main(rest: list[str], args: flags.FlagValues) -> int:
    if rest:
        raise ValueError(f"unexpected argument {rest[0]!r}; see --help")
    if args.table:
        if len(args.table) != 2:
            raise ValueError("--table: give two files, --table=TIMINGS,FLOPS")
        print(table(*args.table))
        return 0
    with contextlib.ExitStack() as stack:
        # Appended line by line, so that a run cut short keeps what it measured.
        out = stack.enter_context(open(args.output, "a")) if args.output else None

        def emit(record: dict) -> None:
            line = json.dumps(record)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()

        emit(_machine())
        if args.count_flops:
            count_flops(emit, args.quick)
            return 0
        time_cases(emit, args.quick, args.warmup, args.steps)
        if args.torch_peer:
            try:
                for record in torch_cases(args.torch_peer, args.quick, args.warmup, args.steps):
                    emit(record)
            except Exception as err:
                emit({"case": "torch", "error": f"{type(err).__name__}: {err}"[-1500:]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
