"""How ``bench.py`` compares on a shared machine: alternating processes, and warm servers in lockstep.

Timings drift with the load from other processes, so every comparison takes its two sides in
turn and reports per-pair ratios beside the medians: whole processes one after the other
(:func:`alternate_runs`: JAX against the PyTorch peer's own benchmark), or single steps of two
warm servers (:func:`lockstep`: JAX against PyTorch; :func:`compare_variants`: the x4 step
against each thing tried on it). Standard library only, like the process side it drives.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence

from bench_process import Server, jax_server, run_json, run_json_wait4, torch_server

# A variant of the JAX server: (its extra options, environment changes; None removes a variable).
Variant = tuple[list[str], dict[str, str | None]]


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def alternate_runs(name: str, jax_cmd: list[str], torch_cmd: list[str] | None, *, repeats: int,
                   env: Mapping[str, str], torch_env: Mapping[str, str], timeout: float,
                   malloc: str, torch_malloc: str, torch_key: str = "median_s") -> dict:
    """JAX, torch, JAX, torch, ... (`repeats` pairs; JAX alone without `torch_cmd`).

    The record is the JAX run with the median time, its ``median_s`` the median of the runs,
    with the runs' times and the load average before each; with torch, the peer's times and
    ``torch_over_jax`` (> 1: JAX is faster), the ratio of medians, and the per-pair ratios.
    """
    jax_runs, torch_runs, loads = [], [], []
    for _ in range(repeats):
        loads.append(os.getloadavg()[0])
        jax_runs.append(run_json(jax_cmd, env=env, timeout=timeout))
        if torch_cmd is not None:
            loads.append(os.getloadavg()[0])
            torch_runs.append(run_json_wait4(torch_cmd, env=torch_env))
    j = [r["median_s"] for r, _ in jax_runs]
    middle = sorted(range(len(j)), key=lambda i: j[i])[(len(j) - 1) // 2]
    record = dict(jax_runs[middle][0])  # the run with the median time, for its other fields
    record.update({"bench": name, "median_s": median(j), "runs_s": j, "malloc": malloc,
                   "peak_rss_mb": max(rss for _, rss in jax_runs), "loadavg_before_runs": loads})
    if torch_runs:
        t = [r[torch_key] for r, _ in torch_runs]
        record.update({"torch_median_s": median(t), "torch_runs_s": t, "torch_malloc": torch_malloc,
                       "torch_peak_rss_mb": max(rss for _, rss in torch_runs),
                       "torch_over_jax": median(t) / median(j),
                       "pair_ratios": [tt / jj for tt, jj in zip(t, j)]})
    return record


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
             jax_env: Mapping[str, str], torch_env: Mapping[str, str]) -> dict:
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
            "lockstep_jax_median_s": median(j), "lockstep_torch_median_s": median(t),
            "lockstep_jax_min_s": min(j), "lockstep_torch_min_s": min(t),
            "lockstep_torch_over_jax_median": median(t) / median(j),
            "lockstep_torch_over_jax_min": min(t) / min(j),
            "lockstep_pair_ratio_median": median([b / a for a, b in zip(j, t)]),
            "lockstep_loadavg": loads,
            "lockstep_jax_peak_rss_mb": jax_srv.peak_rss_mb, "lockstep_torch_peak_rss_mb": torch_srv.peak_rss_mb}


def _variant_env(env: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    variant_env = dict(env)
    for key, value in changes.items():
        if value is None:
            variant_env.pop(key, None)
        else:
            variant_env[key] = value
    return variant_env


def compare_variants(argv: list[str], variants: Mapping[str, Variant], names: Sequence[str], pairs: int,
                     env: Mapping[str, str]) -> list[dict]:
    """The default server (`argv`) against each named variant's, alternating single steps of
    the two warm servers; one record per variant (``variant_<name>``), an error record for a
    variant whose server does not start."""
    records = []
    base = jax_server("default", argv, env)
    try:
        for name in names:
            extra_argv, changes = variants[name]
            try:
                other = jax_server(name, argv + extra_argv, _variant_env(env, changes))
            except RuntimeError as err:
                records.append({"bench": f"variant_{name}", "error": str(err)[-1000:]})
                continue
            try:
                default_s, variant_s, loads = alternate_steps(base, other, pairs)
            finally:
                other.close()
            records.append({
                "bench": f"variant_{name}", "options": extra_argv, "env": changes,
                "default_median_s": median(default_s), "variant_median_s": median(variant_s),
                "default_s": default_s, "variant_s": variant_s, "loadavg": loads,
                "speedup": median(default_s) / median(variant_s),
                "pair_speedup_median": median([d / v for d, v in zip(default_s, variant_s)]),
                "variant_peak_rss_mb": other.peak_rss_mb})
    finally:
        base.close()
    for record in records:
        record["default_peak_rss_mb"] = base.peak_rss_mb
    return records
