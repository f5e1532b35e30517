#!/usr/bin/env python3
"""Reproduces the paper's ablations at small scale and writes docs/results.md from the runs.

    python scripts/run_comparisons.py --out runs/comparisons              # train, evaluate, report
    python scripts/run_comparisons.py --out runs/comparisons --only table4
    python scripts/run_comparisons.py --out runs/comparisons --report_only

Three comparisons, every run the model of ``configs/comparison.py`` with one setting changed, the
same data, the same number of steps and the same seeds:

* ``fig2``, the paper's Fig. 2: GS loss vs MAE (ℓ1) vs MSE vs the gradient loss.
* ``table4``, Table 4: plain (no dual, not progressive) vs dual only vs progressive only vs
  dual + progressive.
* ``table6``, Table 6: λ of the GS loss in {0.5, 1, 2, 5}, and the dual weight 0.1 vs 1.

The baseline (GS, λ 2, dual weight 0.1, dual + progressive) belongs to all three and is trained
once. The two main pairs (GS vs MAE, dual + progressive vs plain) run with seeds 0 and 1; the
seed keys both the initial weights and the order of the training crops.

Each run is ``<out>/<variant>-s<seed>/``: a training workdir (``config.json``, ``metrics.jsonl``,
``checkpoints/``, ``summary.json``) plus ``results.json`` (and ``results.md``, ``per_image.csv``)
from :func:`drn_jax.eval_cli.run` on Set5 and Set14 x4. A run with ``summary.json`` is trained,
one with ``results.json`` too is done; rerunning the command skips what is done, resumes an
interrupted run from its checkpoint (Ctrl-C saves one) and evaluates what is not evaluated.
Finally the report (``--report``, default ``docs/results.md``, figures in ``docs/figures/``) is
written from those files alone; ``--report_only`` does just that.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "train"
DEFAULT_BENCHMARK_DIR = REPO.parent / "shared" / "data" / "benchmark"
DEFAULT_REPORT = REPO / "docs" / "results.md"
CONFIG_FILE = REPO / "configs" / "comparison.py"
DATASETS = ("Set5", "Set14")
METRICS = ("psnr", "ssim", "gradient_psnr")
STATE_FILE = "comparisons.json"
# Blocks of the report that other scripts write (their begin and end markers), kept on rewrite in
# the order the file has them: scripts/run_pilots.py's (KEPT_BLOCKS[0], which it reads) and
# scripts/run_device_comparisons.py's.
KEPT_BLOCKS = (("<!-- pilots:begin -->", "<!-- pilots:end -->"),
               ("<!-- device-comparisons:begin -->", "<!-- device-comparisons:end -->"))

# A run's PSNR moves by a few hundredths of a dB with the seed alone; without two-seed pairs to
# measure that, this is the assumed seed-to-seed standard deviation of one run's score.
NOISE_FLOOR_DB = 0.02
# A difference counts when it exceeds this many standard deviations of the difference.
SIGNIFICANCE = 2.0

# --tiny: a network and crops small enough for a smoke run of a few seconds per run.
TINY_OVERRIDES = (("model.features", 4), ("model.modules_per_block", 1), ("data.hr_patch_size", 32),
                  ("batch_size", 8), ("data.val_limit", 2))


# ---------------------------------------------------------------------------
# What runs, and what each comparison shows
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting: the comparison config plus `overrides`, trained once per seed."""

    name: str
    label: str
    overrides: tuple[tuple[str, Any], ...] = ()
    seeds: tuple[int, ...] = (0,)

    def run_names(self) -> list[str]:
        return [run_name(self.name, seed) for seed in self.seeds]


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


VARIANTS: tuple[Variant, ...] = (
    # The paper's DRN objective; shared by the three comparisons.
    Variant("base", "GS, λ 2, dual 0.1, dual + progressive", (), (0, 1)),
    # Fig. 2: the losses. "gradient" is Eq. 3 (MAE + λ·gradient loss with the config's λ 2): the
    # paper notes that the gradient loss of Eq. 2 alone cannot be minimised for SR (it ignores
    # the mean colour), so the joint loss is the gradient-loss baseline a network can train on.
    Variant("mae", "MAE (ℓ1)", (("loss.name", "l1"),), (0, 1)),
    Variant("mse", "MSE (ℓ2)", (("loss.name", "mse"),)),
    Variant("gradient", "Gradient (Eq. 3: MAE + 2·L_g)", (("loss.name", "pixel_gradient"),)),
    # Table 4: the structure, each with the GS loss.
    Variant("plain", "Plain", (("model.dual", False), ("model.progressive", False)), (0, 1)),
    Variant("dual", "Dual", (("model.progressive", False),)),
    Variant("progressive", "Progressive", (("model.dual", False),)),
    # Table 6: λ of Eq. 5, and the weight of the dual loss (Eq. 7).
    Variant("lam0.5", "λ 0.5", (("loss.lam", 0.5),)),
    Variant("lam1", "λ 1", (("loss.lam", 1.0),)),
    Variant("lam5", "λ 5", (("loss.lam", 5.0),)),
    Variant("dualw1", "dual weight 1", (("loss.dual_weight", 1.0),)),
)
VARIANT_BY_NAME = {variant.name: variant for variant in VARIANTS}


@dataclasses.dataclass(frozen=True)
class Row:
    variant: str
    label: str
    paper: tuple[float | None, float | None] = (None, None)  # (Set5, Set14) PSNR, x4


@dataclasses.dataclass(frozen=True)
class Claim:
    """What the paper says about two settings, checked against our runs.

    kind: ``greater`` (the paper finds `a` better than `b`), ``not_greater`` (the paper finds no
    gain of `a` over `b`), or ``report`` (the paper says nothing; the difference is only stated).
    """

    a: str
    b: str
    kind: str
    statement: str


@dataclasses.dataclass(frozen=True)
class Comparison:
    name: str
    title: str
    figure: str
    rows: tuple[Row, ...]
    claims: tuple[Claim, ...]
    note: str


# Paper numbers (Set5, Set14 PSNR at x4), as docs/method.md quotes them.
PAPER_TABLE4 = {"plain": (31.96, 28.37), "dual": (32.04, 28.47), "progressive": (32.17, 28.52),
                "base": (32.24, 28.58)}
PAPER_BICUBIC = (28.42, 26.10)  # the paper's bicubic rows (Set5, Set14 x4)
PAPER_TABLE6 = {"lam0.5": (31.55, None), "lam1": (31.92, None), "base": (32.24, None),
                "lam5": (32.24, None)}

COMPARISONS: tuple[Comparison, ...] = (
    Comparison(
        "fig2", "Fig. 2: loss functions", "fig2_losses",
        (Row("base", "GS (ours)"), Row("mae", "MAE (ℓ1)"), Row("mse", "MSE (ℓ2)"),
         Row("gradient", "Gradient (Eq. 3: MAE + 2·L_g)")),
        (Claim("base", "mae", "greater", "GS beats MAE"),
         Claim("base", "mse", "greater", "GS beats MSE"),
         Claim("base", "gradient", "greater", "GS beats the gradient loss")),
        "The paper's Fig. 2 is a training curve without a table; its text says the GS loss "
        "\"converges to the highest PSNR score among all the compared losses\"."),
    Comparison(
        "table4", "Table 4: dual reconstruction and progressive structure", "table4_dual_progressive",
        tuple(Row(name, label, PAPER_TABLE4[name]) for name, label in
              (("plain", "Plain"), ("dual", "Dual"), ("progressive", "Progressive"),
               ("base", "Dual + Progressive"))),
        (Claim("dual", "plain", "greater", "Dual beats Plain"),
         Claim("progressive", "plain", "greater", "Progressive beats Plain"),
         Claim("base", "plain", "greater", "Dual + Progressive beats Plain"),
         Claim("base", "dual", "greater", "Dual + Progressive beats Dual"),
         Claim("base", "progressive", "greater", "Dual + Progressive beats Progressive")),
        "Paper: DRN x4 trained on 350k ImageNet images (F 64, 14 modules); all with the GS loss."),
    Comparison(
        "table6", "Table 6: λ of the GS loss, and the dual weight", "table6_lambda_dual_weight",
        (Row("lam0.5", "λ 0.5", PAPER_TABLE6["lam0.5"]), Row("lam1", "λ 1", PAPER_TABLE6["lam1"]),
         Row("base", "λ 2 (dual weight 0.1)", PAPER_TABLE6["base"]), Row("lam5", "λ 5", PAPER_TABLE6["lam5"]),
         Row("dualw1", "λ 2, dual weight 1")),
        (Claim("lam1", "lam0.5", "greater", "λ 1 beats λ 0.5"),
         Claim("base", "lam1", "greater", "λ 2 beats λ 1"),
         Claim("lam5", "base", "not_greater", "λ 5 brings no gain over λ 2"),
         Claim("dualw1", "base", "report", "dual weight 1 against 0.1")),
        "The paper's Table 6 gives Set5 x4 only (also λ 0.1 → 30.44 and λ 1.5 → 32.13, not rerun "
        "here) and no dual weight; 0.1 is the authors' later code's."),
)
COMPARISON_BY_NAME = {comparison.name: comparison for comparison in COMPARISONS}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    variant: Variant
    seed: int


def runs_of(variants: Sequence[Variant]) -> list[Run]:
    """Every seed's run of each of `variants`, in order."""
    return [Run(run_name(v.name, seed), v, seed) for v in variants for seed in v.seeds]


def all_runs() -> list[Run]:
    """Every run of every comparison, each once, baseline first."""
    return runs_of(VARIANTS)


def select_runs(only: str | None) -> list[Run]:
    """The runs named by ``--only``: run names (``base-s1``), variants (``base``) or comparisons."""
    runs = all_runs()
    if not only:
        return runs
    wanted: set[str] = set()
    for item in (part.strip() for part in only.split(",")):
        if not item:
            continue
        if item in COMPARISON_BY_NAME:
            comparison = COMPARISON_BY_NAME[item]
            wanted.update(name for row in comparison.rows for name in VARIANT_BY_NAME[row.variant].run_names())
        elif item in VARIANT_BY_NAME:
            wanted.update(VARIANT_BY_NAME[item].run_names())
        elif any(run.name == item for run in runs):
            wanted.add(item)
        else:
            names = [c.name for c in COMPARISONS] + [v.name for v in VARIANTS] + [r.name for r in runs]
            raise ValueError(f"--only: unknown name {item!r}; use comparisons, variants or runs: "
                             f"{', '.join(names)}")
    return [run for run in runs if run.name in wanted]


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

def _load_config_module():
    spec = importlib.util.spec_from_file_location("drn_comparison_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE a Python literal (``4``, ``0.5``, ``False``, ``'gs'``) or a bare string."""
    if "=" not in text:
        raise ValueError(f"--override {text!r}: expected KEY=VALUE, e.g. model.features=16")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = {"true": True, "false": False}.get(value.strip().lower(), value)
    return key.strip(), parsed


def train_source(data_dir: pathlib.Path) -> str:
    """``folder:`` source of T91 and BSD200 under `data_dir`, or of `data_dir` itself."""
    parts = [data_dir / "T91", data_dir / "BSD200"]
    if all(part.is_dir() for part in parts):
        return "folder:" + ",".join(str(part) for part in parts)
    return f"folder:{data_dir}"


def build_config(run: Run, *, steps: int, data_dir: pathlib.Path, benchmark_dir: pathlib.Path,
                 overrides: Sequence[tuple[str, Any]] = ()):
    """The config of `run`: configs/comparison.py at `steps`, the variant's overrides, the seed."""
    config = _load_config_module().get_config(str(steps))
    config.data.train = train_source(data_dir)
    config.data.val = f"folder:{benchmark_dir / 'Set5' / 'HR'}"
    from drn_jax import config as config_lib

    for key, value in (*run.variant.overrides, *overrides):
        config_lib.override(config, key, value)
    config.seed = run.seed
    return config


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: Mapping[str, Any], config) -> list[str]:
    """Fields where a run's saved config.json differs from `config` (data paths aside)."""
    new = _flatten(json.loads(json.dumps(config.to_dict())))
    old = _flatten(saved)
    ignore = {"data.train", "data.val", "data.tfds_data_dir"}
    return [f"{key}: {old.get(key)!r} saved, {new.get(key)!r} now" for key in sorted(set(old) | set(new))
            if key not in ignore and old.get(key) != new.get(key)]


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------

def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def machine_description() -> str:
    from drn_jax.machine import cpu_description

    return cpu_description()


def evaluate_run(run_dir: pathlib.Path, benchmark_dir: pathlib.Path) -> dict[str, Any]:
    """Set5 and Set14 x4 scores of the run's last checkpoint, as ``<run_dir>/results.json``."""
    from drn_jax import eval_cli

    options = eval_cli.EvalOptions(workdir=str(run_dir), data_dir=str(benchmark_dir), datasets=DATASETS,
                                     output_dir=str(run_dir), progress=False)
    eval_cli.run(options, print_fn=lambda line: print("    " + line.replace("\n", "\n    "), flush=True))
    return json.loads((run_dir / "results.json").read_text())


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of a batch: its folder name under ``--out``, its progress header, its config."""

    name: str
    header: str
    config: Any


def run_all(runs: Sequence[Run], args: argparse.Namespace, overrides: Sequence[tuple[str, Any]]) -> int:
    """Trains and evaluates every comparison run that is not done; returns the exit status."""
    jobs = [Job(run.name, f"{run.name} ({run.variant.label}, seed {run.seed})",
                build_config(run, steps=args.steps, data_dir=args.data_dir, benchmark_dir=args.benchmark_dir,
                             overrides=overrides)) for run in runs]
    return train_and_score(jobs, args, overrides)


def train_and_score(jobs: Sequence[Job], args: argparse.Namespace, overrides: Sequence[tuple[str, Any]],
                    *, state_file: str = STATE_FILE) -> int:
    """Trains and scores every job under ``args.out`` that is not done; returns the exit status.

    Shared by this script and scripts/run_pilots.py. A job whose folder holds ``results.json`` is
    skipped; one with ``summary.json`` is only scored; a stopped run (SIGTERM, Ctrl-C) returns 0 and
    resumes with the same command. ``args`` gives ``out``, ``steps``, ``data_dir`` and
    ``benchmark_dir``; `state_file` (under ``out``) records the machine and each run's wall time.
    """
    from drn_jax import training
    from drn_jax.errors import RunError

    out: pathlib.Path = args.out
    # Everything that would stop a run half-way is checked before the first step.
    for path in (args.data_dir, args.benchmark_dir / "Set5" / "HR", args.benchmark_dir / "Set14" / "HR"):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder; see --data_dir and --benchmark_dir")
    for job in jobs:
        saved = _read_json(out / job.name / "config.json")
        if saved is not None:
            differences = config_differences(saved, job.config)
            if differences:
                raise ValueError(f"{out / job.name} was trained with other settings ({'; '.join(differences[:3])}); "
                                 "rerun with the same --steps/--override/--tiny, or use another --out")

    out.mkdir(parents=True, exist_ok=True)
    state_path = out / state_file
    state = _read_json(state_path) or {}
    state.update(machine=machine_description(), steps=args.steps,
                 overrides=[f"{k}={v!r}" for k, v in overrides], data_dir=str(args.data_dir),
                 benchmark_dir=str(args.benchmark_dir))
    state.setdefault("runs", {})

    def save_state() -> None:
        partial = state_path.with_name(state_path.name + ".partial")
        partial.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(partial, state_path)

    save_state()
    failed: list[str] = []
    durations: list[float] = []  # seconds per run trained in this invocation
    previous = [s.get("seconds") for s in state["runs"].values() if s.get("seconds")]
    start_all = time.perf_counter()
    for index, job in enumerate(jobs, 1):
        run_dir = out / job.name
        trained = (run_dir / "summary.json").is_file()
        evaluated = trained and (run_dir / "results.json").is_file()
        pending = sum(not (out / j.name / "results.json").is_file() for j in jobs[index - 1:])
        per_run = (sum(durations) / len(durations)) if durations else (
            sum(previous) / len(previous) if previous else None)
        eta = _duration(per_run * pending) if per_run is not None else "after the first run"
        header = f"[{index}/{len(jobs)}] {job.header}"
        if evaluated:
            print(f"{header}: done, skipped", flush=True)
            continue
        print(f"{header}: {'evaluating' if trained else 'training ' + str(args.steps) + ' steps'} | "
              f"{pending} run(s) left, ETA {eta} | elapsed {_duration(time.perf_counter() - start_all)}",
              flush=True)
        started = time.perf_counter()
        try:
            if not trained:
                summary = training.train_and_evaluate(job.config, run_dir)
                if summary.get("stopped_by"):
                    print(f"{summary['stopped_by']}: {job.name} saved at step {summary['step']}; "
                          "rerun the same command to resume", flush=True)
                    return 0
            scores = evaluate_run(run_dir, args.benchmark_dir)
        except RunError as err:  # a non-finite loss: the other runs can still go on
            print(f"error: {job.name}: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
            failed.append(job.name)
            continue
        seconds = time.perf_counter() - started
        if not trained:
            durations.append(seconds)
        state["runs"][job.name] = {"seconds": seconds if not trained else state["runs"].get(
            job.name, {}).get("seconds"), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        save_state()
        line = ", ".join(f"{d} {scores[d]['psnr']:.2f} dB" for d in DATASETS if d in scores)
        print(f"[{index}/{len(jobs)}] {job.name}: {line} in {_duration(seconds)}", flush=True)
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; the report leaves them out",
              file=sys.stderr, flush=True)
        return 1
    return 0


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class VariantScores:
    """Scores of one variant's evaluated runs: ``values[dataset][metric]`` lists one per seed."""

    seeds: list[int]
    values: dict[str, dict[str, list[float]]]

    def mean(self, dataset: str, metric: str = "psnr") -> float | None:
        values = self.values.get(dataset, {}).get(metric, [])
        return sum(values) / len(values) if values else None

    def spread(self, dataset: str, metric: str = "psnr") -> float | None:
        """Half the range over seeds (None for one seed)."""
        values = self.values.get(dataset, {}).get(metric, [])
        return (max(values) - min(values)) / 2 if len(values) >= 2 else None

    def by_seed(self, dataset: str, metric: str = "psnr") -> dict[int, float]:
        return dict(zip(self.seeds, self.values.get(dataset, {}).get(metric, [])))


def load_scores(out: pathlib.Path, variants: Sequence[Variant] = VARIANTS) -> dict[str, VariantScores]:
    """Each of `variants`' scores from ``<out>/<run>/results.json`` (runs without one are left out)."""
    scores: dict[str, VariantScores] = {}
    for variant in variants:
        entry = VariantScores([], {d: {m: [] for m in METRICS} for d in DATASETS})
        for seed in variant.seeds:
            results = _read_json(out / run_name(variant.name, seed) / "results.json")
            if not results or not all(d in results for d in DATASETS):
                continue
            entry.seeds.append(seed)
            for dataset in DATASETS:
                for metric in METRICS:
                    entry.values[dataset][metric].append(float(results[dataset][metric]))
        if entry.seeds:
            scores[variant.name] = entry
    return scores


def seed_noise(scores: Mapping[str, VariantScores], dataset: str) -> tuple[float | None, int]:
    """(pooled seed-to-seed standard deviation of one run's PSNR, number of variants it pools)."""
    variances = []
    for entry in scores.values():
        values = entry.values.get(dataset, {}).get("psnr", [])
        if len(values) >= 2:
            mean = sum(values) / len(values)
            variances.append(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    if not variances:
        return None, 0
    return math.sqrt(sum(variances) / len(variances)), len(variances)


@dataclasses.dataclass
class Check:
    """One claim on one dataset: our difference a − b and what it says about the paper."""

    difference: float
    threshold: float  # SIGNIFICANCE standard deviations of the difference
    seed_differences: list[float]
    verdict: str  # agrees | disagrees | inconclusive | higher | lower | within noise


def check_claim(claim: Claim, scores: Mapping[str, VariantScores], dataset: str,
                noise: float | None) -> Check | None:
    """Compares two variants on one dataset; None when either has no evaluated run."""
    a, b = scores.get(claim.a), scores.get(claim.b)
    if a is None or b is None or a.mean(dataset) is None or b.mean(dataset) is None:
        return None
    difference = a.mean(dataset) - b.mean(dataset)
    sigma = max(noise or 0.0, NOISE_FLOOR_DB)
    threshold = SIGNIFICANCE * sigma * math.sqrt(1 / len(a.seeds) + 1 / len(b.seeds))
    pa, pb = a.by_seed(dataset), b.by_seed(dataset)
    seed_differences = [pa[s] - pb[s] for s in sorted(set(pa) & set(pb))]
    # With paired seeds, a difference counts only if every seed shows its sign.
    consistent_up = difference > threshold and all(d > 0 for d in seed_differences)
    consistent_down = difference < -threshold and all(d < 0 for d in seed_differences)
    if claim.kind == "greater":
        verdict = "agrees" if consistent_up else "disagrees" if consistent_down else "inconclusive"
    elif claim.kind == "not_greater":
        verdict = "disagrees" if consistent_up else "agrees"
    else:
        verdict = "higher" if consistent_up else "lower" if consistent_down else "within noise"
    return Check(difference, threshold, seed_differences, verdict)


def _paper_difference(comparison: Comparison, claim: Claim, dataset_index: int) -> float | None:
    paper = {row.variant: row.paper[dataset_index] for row in comparison.rows}
    a, b = paper.get(claim.a), paper.get(claim.b)
    return a - b if a is not None and b is not None else None


def claim_sentence(comparison: Comparison, claim: Claim, scores: Mapping[str, VariantScores],
                   noise: Mapping[str, float | None]) -> tuple[str, list[str]]:
    """One sentence about a claim, from the numbers; and the verdicts per dataset."""
    labels = {row.variant: row.label for row in comparison.rows}
    parts, verdicts = [], []
    for index, dataset in enumerate(DATASETS):
        check = check_claim(claim, scores, dataset, noise.get(dataset))
        if check is None:
            continue
        detail = [f"noise ±{check.threshold:.2f}"]
        if len(check.seed_differences) >= 2:
            detail.insert(0, "seeds " + ", ".join(f"{d:+.2f}" for d in check.seed_differences))
        paper = _paper_difference(comparison, claim, index)
        if paper is not None:
            detail.append(f"paper {paper:+.2f}")
        parts.append(f"{dataset} {check.difference:+.2f} dB ({'; '.join(detail)}): {check.verdict}")
        verdicts.append(check.verdict)
    name = f"{labels.get(claim.a, claim.a)} − {labels.get(claim.b, claim.b)}"
    if not parts:
        return f"- *{claim.statement}*: not run yet.", []
    expectation = {"greater": f"paper: {claim.statement}", "not_greater": f"paper: {claim.statement}",
                   "report": "the paper gives no number"}[claim.kind]
    return f"- **{name}** ({expectation}). " + "; ".join(parts) + ".", verdicts


def summary_sentence(verdicts: Sequence[str]) -> str:
    judged = [v for v in verdicts if v in ("agrees", "disagrees", "inconclusive")]
    if not judged:
        return "No claim of the paper could be checked yet."
    counts = {v: judged.count(v) for v in ("agrees", "disagrees", "inconclusive")}
    if counts["agrees"] == 0 and counts["disagrees"] == 0:
        overall = "No difference exceeds the seed noise: these runs neither confirm nor contradict the paper."
    elif counts["disagrees"] == 0 and counts["inconclusive"] == 0:
        overall = "The runs agree with the paper on every check."
    elif counts["agrees"] == 0 and counts["inconclusive"] == 0:
        overall = "The runs disagree with the paper on every check."
    elif counts["disagrees"] == 0:
        overall = "Where the differences exceed the seed noise, the runs agree with the paper."
    elif counts["agrees"] == 0:
        overall = "Where the differences exceed the seed noise, the runs disagree with the paper."
    else:
        overall = "The runs agree with the paper on some checks and disagree on others."
    def count(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    return (f"{overall} Of {count(len(judged), 'dataset check', 'dataset checks')}, "
            f"{count(counts['agrees'], 'agrees', 'agree')}, {count(counts['disagrees'], 'disagrees', 'disagree')} "
            f"and {count(counts['inconclusive'], 'is', 'are')} within the noise.")


def _cell(entry: VariantScores | None, dataset: str, metric: str) -> str:
    if entry is None:
        return "not run"
    mean, spread = entry.mean(dataset, metric), entry.spread(dataset, metric)
    if mean is None:
        return "not run"
    digits = 4 if metric == "ssim" else 2
    return f"{mean:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


def comparison_table(comparison: Comparison, scores: Mapping[str, VariantScores],
                     bicubic: Mapping[str, Mapping[str, float]]) -> list[str]:
    # The paper's PSNR for the datasets it gives numbers for.
    paper_columns = [i for i, _ in enumerate(DATASETS) if any(row.paper[i] is not None for row in comparison.rows)]
    header = ["Setting", "seeds"] + [f"{d} {m}" for d in DATASETS for m in ("PSNR", "SSIM", "grad. PSNR")]
    header += [f"paper {DATASETS[i]} PSNR" for i in paper_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in comparison.rows:
        entry = scores.get(row.variant)
        cells = [row.label, ", ".join(map(str, entry.seeds)) if entry else "-"]
        cells += [_cell(entry, d, m) for d in DATASETS for m in METRICS]
        cells += [f"{row.paper[i]:.2f}" if row.paper[i] is not None else "-" for i in paper_columns]
        lines.append("| " + " | ".join(cells) + " |")
    if bicubic:
        cells = ["Bicubic", "-"] + [f"{bicubic[d][m]:.{4 if m == 'ssim' else 2}f}" if d in bicubic else "-"
                                    for d in DATASETS for m in METRICS]
        cells += [f"{PAPER_BICUBIC[i]:.2f}" for i in paper_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _bicubic(out: pathlib.Path, runs: Sequence[Run] | None = None) -> dict[str, dict[str, float]]:
    for run in all_runs() if runs is None else runs:
        results = _read_json(out / run.name / "results.json")
        if results and results.get("_meta", {}).get("bicubic"):
            return results["_meta"]["bicubic"]
    return {}


def _data_names(source: str) -> str:
    if source.startswith("folder:"):
        return " + ".join(pathlib.Path(p).name for p in source[len("folder:"):].split(","))
    return source


def _runs_line(summaries: Mapping[str, Mapping[str, Any]], machine: str | None) -> str:
    """How many runs trained, in how much wall time, how fast and where."""
    rates = [s["images_per_second"] for s in summaries.values() if s.get("images_per_second")]
    rate = sum(rates) / len(rates) if rates else None
    where = f", on {machine}" if machine else ""
    lockstep = [s["lockstep"] for s in summaries.values() if s.get("lockstep")]
    if lockstep:  # trained together (drn_jax.lockstep): their wall times overlap
        total = max(s.get("wall_seconds") or 0 for s in summaries.values())
        return (f"- Runs: {len(summaries)} trained in lockstep in one process ({lockstep[0]['settings']} "
                f"compiled programs, one per setting, each stepping its seeds together), {_duration(total)} "
                "of wall time in all" + (f", {rate:.1f} crops/s per run ({rate * len(rates):.0f} in all)"
                                         if rate else "") + where + ".")
    total = sum(s.get("wall_seconds") or 0 for s in summaries.values())
    return (f"- Runs: {len(summaries)} trained, {_duration(total)} of wall time in all"
            + (f", {rate:.1f} crops/s on average" if rate else "") + where + ".")


def setup_lines(out: pathlib.Path, runs: Sequence[Run] | None = None, *, heading: str = "##") -> list[str]:
    """The setup section, from the first run's config.json and the runs' summaries."""
    runs = all_runs() if runs is None else runs
    config = None
    for run in runs:
        config = _read_json(out / run.name / "config.json")
        if config:
            break
    state = _read_json(out / STATE_FILE) or {}
    summaries = {run.name: _read_json(out / run.name / "summary.json") for run in runs}
    summaries = {name: s for name, s in summaries.items() if s}
    lines = [f"{heading} Setup", ""]
    if not config:
        return lines + ["No run has started yet.", ""]
    model = config["model"]
    lines += [
        f"- Model: DRN x{config['scale']}, F {model['features']}, R {model['modules_per_block']} (residual "
        f"modules per block; the paper: F 64, R 7), `configs/comparison.py`.",
        f"- Training: {config['num_train_steps']} steps of batch {config['batch_size']}, HR patch "
        f"{config['data']['hr_patch_size']}, Adam, learning rate {config['learning_rate']} "
        f"×{config['lr_decay_factor']} every {config['lr_decay_every']} steps, on "
        f"{_data_names(config['data']['train'])}; every run the same, seeds as listed.",
        f"- Evaluation: `drn_jax.evaluation` (eval.py's protocol): x4, Y channel, 4 pixels shaved, "
        f"Set5 and Set14. Training curves: Set5 PSNR every {config['eval_every_steps']} steps.",
        _runs_line(summaries, state.get("machine")),
        f"- Spread: ± is half the range over the seeds. Noise: a difference counts when it exceeds "
        f"{SIGNIFICANCE:g} standard deviations of a difference of means, with the seed-to-seed standard "
        f"deviation pooled over the settings run with two seeds (at least {NOISE_FLOOR_DB} dB), and, "
        "for paired seeds, only if every seed shows its sign.",
        "",
    ]
    if state.get("overrides"):
        lines.insert(-1, f"- Overrides of this batch of runs: {', '.join(state['overrides'])}.")
    return lines


def runs_table(out: pathlib.Path, runs: Sequence[Run] | None = None, *, heading: str = "##") -> list[str]:
    lines = [f"{heading} Runs", "", "| run | setting | seed | steps | wall time | crops/s | final Set5 PSNR (val) |",
             "|---|---|---|---|---|---|---|"]
    for run in all_runs() if runs is None else runs:
        summary = _read_json(out / run.name / "summary.json")
        if not summary:
            lines.append(f"| {run.name} | {run.variant.label} | {run.seed} | not run | | | |")
            continue
        rate = summary.get("images_per_second")
        lines.append(f"| {run.name} | {run.variant.label} | {run.seed} | {summary.get('step')} | "
                     f"{_duration(summary.get('wall_seconds'))} | {f'{rate:.1f}' if rate else '-'} | "
                     f"{summary.get('val_psnr', float('nan')):.2f} |")
    return lines + [""]


def comparison_sections(out: pathlib.Path, report: pathlib.Path,
                        comparisons: Sequence[Comparison] = COMPARISONS, variants: Sequence[Variant] = VARIANTS,
                        *, heading: str = "##", title_suffix: str = "", figure_suffix: str = ""
                        ) -> tuple[list[str], list[str]]:
    """Each of `comparisons` as a report section, from the runs of `variants` in `out`: its table,
    note, training-curve figure (written to ``figures/<figure><figure_suffix>.png`` beside
    `report`) and a sentence per claim. Returns (lines, the verdicts of every claim)."""
    from drn_jax import plots

    figures = report.parent / "figures"
    by_name = {variant.name: variant for variant in variants}
    scores = load_scores(out, variants)
    noise = {d: seed_noise(scores, d)[0] for d in DATASETS}
    bicubic = _bicubic(out, runs_of(variants))
    lines: list[str] = []
    all_verdicts: list[str] = []
    for comparison in comparisons:
        lines += [f"{heading} {comparison.title}{title_suffix}", ""]
        lines += comparison_table(comparison, scores, bicubic)
        lines += ["", comparison.note, ""]
        curves = {}
        for row in comparison.rows:
            paths = [out / name / "metrics.jsonl" for name in by_name[row.variant].run_names()]
            paths = [p for p in paths if p.is_file() and plots.load_eval_curve(p)[0]]
            if paths:
                curves[row.label] = paths
        if curves:
            figure = plots.plot_training_curves(curves, figures / f"{comparison.figure}{figure_suffix}.png",
                                                title=f"{comparison.title}{title_suffix} (Set5 x4 during training)")
            lines += [f"![{comparison.title}: validation PSNR against steps]"
                      f"({os.path.relpath(figure, report.parent)})", "",
                      "Set5 x4 PSNR during training (dashed: the second seed; dotted: bicubic, when in range; "
                      "the axis fits the last three quarters of training).", ""]
        sentences, verdicts = [], []
        for claim in comparison.claims:
            sentence, claim_verdicts = claim_sentence(comparison, claim, scores, noise)
            sentences.append(sentence)
            if claim.kind != "report":
                verdicts += claim_verdicts
        all_verdicts += verdicts
        lines += ["**Against the paper.** " + summary_sentence(verdicts), ""] + sentences + [""]
    return lines, all_verdicts


def overall_lines(out: pathlib.Path, verdicts: Sequence[str], variants: Sequence[Variant] = VARIANTS,
                  *, heading: str = "##") -> list[str]:
    """The overall verdict, with the seed noise pooled over `variants`' runs in `out`."""
    scores = load_scores(out, variants)
    noise = {d: seed_noise(scores, d)[0] for d in DATASETS}
    noise_text = ", ".join(f"{d} {noise[d]:.3f} dB" for d in DATASETS if noise[d] is not None)
    return [f"{heading} Overall", "", summary_sentence(verdicts)
            + (f" Seed-to-seed standard deviation of one run's PSNR: {noise_text}." if noise_text else ""), ""]


def write_report(out: str | pathlib.Path, report: str | pathlib.Path, *, command: str | None = None) -> str:
    """Writes the Markdown report and its figures from the run folders in `out`; returns the text."""
    out, report = pathlib.Path(out), pathlib.Path(report)
    lines = [
        "# Results: the paper's ablations at small scale", "",
        "<!-- Generated by scripts/run_comparisons.py from "
        f"{out.name}/*/{{results,summary,config}}.json and metrics.jsonl; do not edit by hand. -->", "",
        "Each comparison of the paper (Guo et al., arXiv:1809.07099) rerun with a small DRN on this "
        "project's CPU: one setting changed at a time, with equal budgets, the same data and the same "
        "seeds. Absolute PSNRs are far below the paper's (a network 7x smaller, minutes of training "
        "on 291 images instead of days on ImageNet); what is compared is the differences.", "",
    ]
    if command:
        lines += ["Reproduce with:", "", f"    {command}", ""]
    lines += setup_lines(out)
    sections, verdicts = comparison_sections(out, report)
    lines += sections + overall_lines(out, verdicts) + runs_table(out)
    text = "\n".join(lines)
    # Other scripts' generated blocks (scripts/run_pilots.py, run_device_comparisons.py) live in
    # the same file: keep them, in their order.
    previous = report.read_text() if report.is_file() else ""
    kept = sorted((previous.index(begin), begin, end) for begin, end in KEPT_BLOCKS
                  if begin in previous and end in previous)
    for _, begin, end in kept:
        text = text.rstrip("\n") + "\n\n" + begin + previous.split(begin, 1)[1].split(end, 1)[0] + end + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    partial = report.with_name(report.name + ".partial")
    partial.write_text(text)
    os.replace(partial, report)
    return text


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python scripts/run_comparisons.py",
        description="Train and evaluate the paper's ablations at small scale; write docs/results.md.")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "runs" / "comparisons",
                        help="folder of the run folders (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=800, help="training steps of every run (default: %(default)s)")
    parser.add_argument("--only", help="comma-separated comparisons (fig2, table4, table6), variants "
                                        "(base, mae, ...) or runs (base-s1); default: all")
    parser.add_argument("--data_dir", type=pathlib.Path, default=DEFAULT_DATA_DIR,
                        help="training images: its T91/ and BSD200/ folders, else every image under it "
                             "(default: %(default)s)")
    parser.add_argument("--benchmark_dir", type=pathlib.Path, default=DEFAULT_BENCHMARK_DIR,
                        help="folder holding Set5/HR and Set14/HR (default: %(default)s)")
    parser.add_argument("--report", type=pathlib.Path, default=DEFAULT_REPORT,
                        help="the Markdown report; figures go to figures/ beside it (default: %(default)s)")
    parser.add_argument("--report_only", dest="report_only", action="store_true",
                        help="only regenerate the report from the run folders")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config field for every run, e.g. model.features=16 (repeatable)")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny network and crops, for a smoke test: "
                             + ", ".join(f"{k}={v}" for k, v in TINY_OVERRIDES))
    parser.add_argument("--list", action="store_true", help="print the runs and their overrides, then exit")
    return parser


def exit_status(body: Callable[[], int]) -> int:
    """Runs a script's body: Ctrl-C exits 130 (the runs resume with the same command), and a
    mistake the user can fix (OSError, ValueError) is one line on stderr and exit status 2."""
    try:
        return body()
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (OSError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise ValueError(f"--steps={args.steps} must be at least 1")
    runs = select_runs(args.only)
    if args.list:
        for run in runs:
            changes = ", ".join(f"{k}={v!r}" for k, v in run.variant.overrides) or "(baseline)"
            print(f"{run.name:16s} seed {run.seed}  {changes}")
        return 0
    overrides = [*(TINY_OVERRIDES if args.tiny else ()), *(parse_override(o) for o in args.override)]
    args.out = args.out.expanduser().absolute()
    args.data_dir = args.data_dir.expanduser().absolute()
    args.benchmark_dir = args.benchmark_dir.expanduser().absolute()
    status = 0
    if not args.report_only:
        status = run_all(runs, args, overrides)
    command = "python scripts/run_comparisons.py --out " + shlex.quote(os.path.relpath(args.out, REPO))
    if args.steps != 800:
        command += f" --steps {args.steps}"
    if args.data_dir != DEFAULT_DATA_DIR:
        command += " --data_dir " + shlex.quote(str(args.data_dir))
    if args.benchmark_dir != DEFAULT_BENCHMARK_DIR:
        command += " --benchmark_dir " + shlex.quote(str(args.benchmark_dir))
    command += " --tiny" * args.tiny + "".join(" --override " + shlex.quote(o) for o in args.override)
    write_report(args.out, args.report, command=command)
    print(f"report: {args.report}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
