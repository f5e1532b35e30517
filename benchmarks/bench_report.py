"""What ``bench.py`` reports: the machine record, the JSON lines, and the Markdown table.

The table is the one docs/performance.md shows: one row per measurement, JAX beside the
PyTorch peer where both ran, error and skipped records left out.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess

from drn_jax.files import write_atomic

JSON_LINES = "bench.jsonl"  # in --output_dir
TABLE = "bench.md"


def machine() -> dict:
    """Python version, CPU count and model, the 1-minute load average, and the XLA_FLAGS and
    GLIBC_TUNABLES the suite was started with (those set)."""
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


def _ratio_text(r: dict) -> str:
    if "torch_over_jax" not in r:
        return "-"
    text = f"runs {r['torch_over_jax']:.2f}x"
    if "lockstep_torch_over_jax_median" in r:
        text += (f"; lockstep {r['lockstep_torch_over_jax_median']:.2f}x "
                 f"({r['lockstep_jax_median_s']:.3f} vs {r['lockstep_torch_median_s']:.3f} s)")
    return text


def _fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x == x else "-"


def _row(b: str, r: dict) -> str | None:
    """The table row of record `r` of benchmark `b`, None for a record without one."""
    rss = f"{r.get('peak_rss_mb', float('nan')):.0f} MiB"
    if b.startswith("train_"):
        jax_s = f"{_fmt_s(r['median_s'])}/step, {r['images_per_s']:.1f} img/s (compile {r['compile_s']:.1f} s)"
        torch_s = (f"{_fmt_s(r['torch_median_s'])}/step, {r['torch_images_per_s']:.1f} img/s"
                   if "torch_median_s" in r else "-")
        return f"| {b} (batch {r['batch']}, HR {r['hr_patch']}) | {jax_s} | {torch_s} | {_ratio_text(r)} | {rss} |"
    if b.startswith("infer_x4"):
        torch_s = _fmt_s(r["torch_median_s"]) if "torch_median_s" in r else "-"
        return (f"| {b} (LR {r['lr_size']}², batch 1) | {_fmt_s(r['median_s'])} | {torch_s} | "
                f"{_ratio_text(r)} | {rss} |")
    if b == "breakdown_x4":
        parts = ", ".join(f"{k[:-2]} {v:.3f}" for k, v in r.items() if k.endswith("_s"))
        return f"| breakdown_x4 (s) | {parts} | - | - | {rss} |"
    if b == "gs_loss":
        return (f"| gs_loss {tuple(r['shape'])} value+grad | GS {_fmt_s(r['gs_value_and_grad_s'])}, "
                f"L1 {_fmt_s(r['l1_value_and_grad_s'])}; x4 objective {_fmt_s(r['x4_objective_value_and_grad_s'])} = "
                f"{100 * r['objective_share_of_step']:.1f}% of the step; step GS-L1 = "
                f"{100 * r['gs_minus_l1_share_of_step']:.1f}% | - | - | {rss} |")
    if b == "pipeline":
        return (f"| pipeline crops/s (patch 96) | 1 thread {r['crops_per_s_1_thread']:.0f}, 2 threads "
                f"{r['crops_per_s_2_threads']:.0f}; x4 step eats {r['x4_step_images_per_s']:.1f} img/s "
                f"({r['one_thread_over_step']:.0f}x) | - | - | {rss} |")
    if b.startswith("variant_"):
        return (f"| x4 step, {b[len('variant_'):]} | {_fmt_s(r['variant_median_s'])}/step vs default "
                f"{_fmt_s(r['default_median_s'])}: {r['speedup']:.2f}x | - | - | "
                f"{r['variant_peak_rss_mb']:.0f} MiB (default {r['default_peak_rss_mb']:.0f}) |")
    if b == "upscale_large":
        return (f"| upscale_large {r['lr_side']}² x4 | {r['seconds']:.1f} s; output {r['output_mb']:.0f} MiB, "
                f"peak {r['peak_rss_mb_during']:.0f} MiB ({r['growth_over_output_mb']:.0f} MiB over "
                f"start + output) | - | - | {rss} |")
    if b == "eval_set14":
        return (f"| eval_set14 x4 ({r['images']} images) | {r['wall_s']:.1f} s, network compilations "
                f"{r['network_compilations']}, XLA compilations in the pass {r['xla_compilations_total']} "
                f"| - | - | {rss} |")
    return None


def markdown(records: list[dict]) -> str:
    """The table docs/performance.md shows."""
    rows = ["| benchmark | JAX | PyTorch peer | torch/JAX (>1: JAX faster) | JAX peak RSS |",
            "|---|---|---|---|---|"]
    for r in records:
        b = r.get("bench")
        if b in ("machine", "machine_after") or "error" in r or "skipped" in r:
            continue
        row = _row(b, r)
        if row is not None:
            rows.append(row)
    return "\n".join(rows)


def write(output_dir: str | os.PathLike, records: list[dict], table: str) -> None:
    """`records` as JSON lines (``bench.jsonl``) and `table` (``bench.md``) in `output_dir`."""
    folder = pathlib.Path(output_dir)
    write_atomic(folder / JSON_LINES, "".join(json.dumps(record) + "\n" for record in records))
    write_atomic(folder / TABLE, table + "\n")
