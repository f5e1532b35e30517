"""Experiment machinery the scripts share: jobs, train-and-score, the state file, statistics, reports.

scripts/run_comparisons.py, scripts/run_pilots.py and scripts/run_device_comparisons.py are each a
catalogue of runs plus a report; what they do with the runs lives here. A run is a training
workdir ``<output_dir>/<name>/`` (``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``summary.json``) plus ``results.json`` from :func:`drn_jax.eval_cli.run` on Set5 and Set14 x4:
with ``summary.json`` it is trained, with ``results.json`` too it is done. The state file of a
batch (e.g. ``comparisons.json``) records the machine, the settings and each run's wall time.

The report of a batch is Markdown: a comparison's table, its figure of training curves and a
sentence per claim of the paper, with a difference judged against the seed-to-seed noise. The
scripts' blocks of one file (docs/results.md) are delimited by the markers of `KEPT_BLOCKS`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

from drn_jax import cli, eval_cli, plots, recipes, training
from drn_jax.errors import RunError
from drn_jax.files import write_json
from drn_jax.machine import cpu_description
from drn_jax.reporting import format_duration

DATASETS = ("Set5", "Set14")
METRICS = ("psnr", "ssim", "gradient_psnr")
STATE_FILE = "comparisons.json"
# The blocks of docs/results.md that scripts/run_pilots.py and scripts/run_device_comparisons.py
# write (their begin and end markers); scripts/run_comparisons.py keeps them when it rewrites the
# rest, in the order the file has them.
KEPT_BLOCKS = (("<!-- pilots:begin -->", "<!-- pilots:end -->"),
               ("<!-- device-comparisons:begin -->", "<!-- device-comparisons:end -->"))

# A run's PSNR moves by a few hundredths of a dB with the seed alone; without two-seed pairs to
# measure that, this is the assumed seed-to-seed standard deviation of one run's score.
NOISE_FLOOR_DB = 0.02
# A difference counts when it exceeds this many standard deviations of the difference.
SIGNIFICANCE = 2.0


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
    paper_bicubic: tuple[float | None, float | None] = (None, None)  # (Set5, Set14) PSNR



@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    variant: Variant
    seed: int


def runs_of(variants: Sequence[Variant]) -> list[Run]:
    """Every seed's run of each of `variants`, in order."""
    return [Run(run_name(v.name, seed), v, seed) for v in variants for seed in v.seeds]


def parse_override(text: str) -> tuple[str, Any]:
    """An override as a state file records it, ``KEY=VALUE`` with VALUE a Python literal (``4``,
    ``0.5``, ``False``, ``'gs'``) or a bare string."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. model.features=16")
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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"model.features": 32, ...}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: Mapping[str, Any], config) -> list[str]:
    """Fields where a run's saved config.json differs from `config` (data paths aside)."""
    new = flatten(json.loads(json.dumps(config.to_dict())))
    old = flatten(saved)
    ignore = {"data.train", "data.val", "data.tfds_data_dir"}
    return [f"{key}: {old.get(key)!r} saved, {new.get(key)!r} now" for key in sorted(set(old) | set(new))
            if key not in ignore and old.get(key) != new.get(key)]


def read_json(path: pathlib.Path) -> Any:
    """The JSON in `path`, or None when it is missing or not (yet) complete JSON."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def duration(seconds: float | None) -> str:
    """`format_duration`'s ``1h05m`` / ``4m07s``, or ``unknown`` for a time not recorded."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    return format_duration(seconds)


def run_script(body: Callable[[], int]) -> int:
    """Runs a script's body: Ctrl-C exits 130 (the runs resume with the same command), and a
    mistake the user can fix is one line on stderr and exit status 2 (`cli.exit_status`)."""
    try:
        return cli.exit_status(body)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def evaluate_run(run_dir: pathlib.Path, benchmark_dir: pathlib.Path) -> dict[str, Any]:
    """Set5 and Set14 x4 scores of the run's last checkpoint, as ``<run_dir>/results.json``."""
    options = eval_cli.EvalOptions(workdir=str(run_dir), data_dir=str(benchmark_dir), datasets=DATASETS,
                                   output_dir=str(run_dir), progress=False)
    eval_cli.run(options, print_fn=lambda line: print("    " + line.replace("\n", "\n    "), flush=True))
    return json.loads((run_dir / "results.json").read_text())


def score_line(scores: Mapping[str, Any]) -> str:
    """``Set5 31.20 dB, Set14 27.90 dB``: a run's PSNRs, for progress lines."""
    return ", ".join(f"{d} {scores[d]['psnr']:.2f} dB" for d in DATASETS if d in scores)


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of a batch: its folder name under the batch's folder, its progress header,
    its config."""

    name: str
    header: str
    config: Any


@dataclasses.dataclass(frozen=True)
class Batch:
    """Where and how a batch of jobs runs: `out` holds the run folders and the state file."""

    out: pathlib.Path
    steps: int
    data_dir: pathlib.Path  # training images
    benchmark_dir: pathlib.Path  # Set5/HR and Set14/HR
    overrides: Sequence[tuple[str, Any]] = ()
    state_file: str = STATE_FILE


def check_jobs(jobs: Sequence[Job], batch: Batch) -> None:
    """Raises what would stop a run half-way, before the first step: a missing folder, or a run
    folder trained with other settings."""
    for path in (batch.data_dir, batch.benchmark_dir / "Set5" / "HR", batch.benchmark_dir / "Set14" / "HR"):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder; see --train_dir and --data_dir")
    check_settings(batch.out, {job.name: job.config for job in jobs})


def check_settings(out: pathlib.Path, configs: Mapping[str, Any]) -> None:
    """Raises ValueError when a run folder ``<out>/<name>`` was trained with settings other than
    ``configs[name]`` (its config.json; the data paths aside)."""
    for name, config in configs.items():
        saved = read_json(out / name / "config.json")
        differences = config_differences(saved, config) if saved is not None else []
        if differences:
            raise ValueError(f"{out / name} was trained with other settings ({'; '.join(differences[:3])}); "
                             "rerun with the same --steps/--config.*/--quick, or use another --output_dir")


def open_state(batch: Batch, machine: str | None = None) -> dict[str, Any]:
    """The batch's state file, updated with this invocation's settings and written."""
    state = read_json(batch.out / batch.state_file) or {}
    state.update(machine=machine or cpu_description(), steps=batch.steps,
                 overrides=[f"{k}={v!r}" for k, v in batch.overrides], data_dir=str(batch.data_dir),
                 benchmark_dir=str(batch.benchmark_dir))
    state.setdefault("runs", {})
    write_json(batch.out / batch.state_file, state)
    return state


def train_and_score(jobs: Sequence[Job], batch: Batch) -> int:
    """Trains and scores every job under ``batch.out`` that is not done; returns the exit status.

    A job whose folder holds ``results.json`` is skipped; one with ``summary.json`` is only scored;
    a stopped run (SIGTERM, Ctrl-C) returns 0 and resumes with the same command. The state file
    records the machine and each run's wall time; a run whose loss is not finite is reported and
    the others go on (status 1).
    """
    out = batch.out
    check_jobs(jobs, batch)
    out.mkdir(parents=True, exist_ok=True)
    state = open_state(batch)
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
        eta = duration(per_run * pending) if per_run is not None else "after the first run"
        header = f"[{index}/{len(jobs)}] {job.header}"
        if evaluated:
            print(f"{header}: done, skipped", flush=True)
            continue
        print(f"{header}: {'evaluating' if trained else 'training ' + str(batch.steps) + ' steps'} | "
              f"{pending} run(s) left, ETA {eta} | elapsed {duration(time.perf_counter() - start_all)}",
              flush=True)
        started = time.perf_counter()
        try:
            if not trained:
                summary = training.train_and_evaluate(job.config, run_dir)
                if summary.get("stopped_by"):
                    print(f"{summary['stopped_by']}: {job.name} saved at step {summary['step']}; "
                          "rerun the same command to resume", flush=True)
                    return 0
            scores = evaluate_run(run_dir, batch.benchmark_dir)
        except RunError as err:  # a non-finite loss: the other runs can still go on
            print(f"error: {job.name}: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
            failed.append(job.name)
            continue
        seconds = time.perf_counter() - started
        if not trained:
            durations.append(seconds)
        state["runs"][job.name] = {"seconds": seconds if not trained else state["runs"].get(
            job.name, {}).get("seconds"), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(out / batch.state_file, state)
        print(f"[{index}/{len(jobs)}] {job.name}: {score_line(scores)} in {duration(seconds)}", flush=True)
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; the report leaves them out",
              file=sys.stderr, flush=True)
        return 1
    return 0


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


def load_scores(out: pathlib.Path, variants: Sequence[Variant]) -> dict[str, VariantScores]:
    """Each of `variants`' scores from ``<out>/<run>/results.json`` (runs without one are left out)."""
    scores: dict[str, VariantScores] = {}
    for variant in variants:
        entry = VariantScores([], {d: {m: [] for m in METRICS} for d in DATASETS})
        for seed in variant.seeds:
            results = read_json(out / run_name(variant.name, seed) / "results.json")
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
        cells += [f"{comparison.paper_bicubic[i]:.2f}" if comparison.paper_bicubic[i] is not None else "-"
                  for i in paper_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _bicubic(out: pathlib.Path, runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    for run in runs:
        results = read_json(out / run.name / "results.json")
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
                f"compiled programs, one per setting, each stepping its seeds together), {duration(total)} "
                "of wall time in all" + (f", {rate:.1f} crops/s per run ({rate * len(rates):.0f} in all)"
                                         if rate else "") + where + ".")
    total = sum(s.get("wall_seconds") or 0 for s in summaries.values())
    return (f"- Runs: {len(summaries)} trained, {duration(total)} of wall time in all"
            + (f", {rate:.1f} crops/s on average" if rate else "") + where + ".")


def setup_lines(out: pathlib.Path, runs: Sequence[Run], *, heading: str = "##") -> list[str]:
    """The setup section, from the first run's config.json and the runs' summaries."""
    config = None
    for run in runs:
        config = read_json(out / run.name / "config.json")
        if config:
            break
    state = read_json(out / STATE_FILE) or {}
    summaries = {run.name: read_json(out / run.name / "summary.json") for run in runs}
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


def runs_table(out: pathlib.Path, runs: Sequence[Run], *, heading: str = "##") -> list[str]:
    lines = [f"{heading} Runs", "", "| run | setting | seed | steps | wall time | crops/s | final Set5 PSNR (val) |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        summary = read_json(out / run.name / "summary.json")
        if not summary:
            lines.append(f"| {run.name} | {run.variant.label} | {run.seed} | not run | | | |")
            continue
        rate = summary.get("images_per_second")
        lines.append(f"| {run.name} | {run.variant.label} | {run.seed} | {summary.get('step')} | "
                     f"{duration(summary.get('wall_seconds'))} | {f'{rate:.1f}' if rate else '-'} | "
                     f"{summary.get('val_psnr', float('nan')):.2f} |")
    return lines + [""]


def comparison_sections(out: pathlib.Path, report: pathlib.Path,
                        comparisons: Sequence[Comparison], variants: Sequence[Variant],
                        *, heading: str = "##", title_suffix: str = "", figure_suffix: str = ""
                        ) -> tuple[list[str], list[str]]:
    """Each of `comparisons` as a report section, from the runs of `variants` in `out`: its table,
    note, training-curve figure (written to ``figures/<figure><figure_suffix>.png`` beside
    `report`) and a sentence per claim. Returns (lines, the verdicts of every claim)."""
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


def overall_lines(out: pathlib.Path, verdicts: Sequence[str], variants: Sequence[Variant],
                  *, heading: str = "##") -> list[str]:
    """The overall verdict, with the seed noise pooled over `variants`' runs in `out`."""
    scores = load_scores(out, variants)
    noise = {d: seed_noise(scores, d)[0] for d in DATASETS}
    noise_text = ", ".join(f"{d} {noise[d]:.3f} dB" for d in DATASETS if noise[d] is not None)
    return [f"{heading} Overall", "", summary_sentence(verdicts)
            + (f" Seed-to-seed standard deviation of one run's PSNR: {noise_text}." if noise_text else ""), ""]




def put_block(text: str, block: str, begin: str, end: str, *, before: str | None = None) -> str:
    """`text` with `block` (which starts with `begin` and ends with `end`) in place of the old
    block, else just before the marker `before` when `text` has it, else appended last."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    if before is not None and before in text:
        head, rest = text.split(before, 1)
        return head + block + "\n\n" + before + rest
    return text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"


def keep_blocks(text: str, previous: str, blocks: Sequence[tuple[str, str]] = KEPT_BLOCKS) -> str:
    """`text` followed by the `blocks` (begin and end markers) that `previous` holds, in its order:
    the other scripts' generated blocks of a report that one script rewrites."""
    kept = sorted((previous.index(begin), begin, end) for begin, end in blocks
                  if begin in previous and end in previous)
    for _, begin, end in kept:
        text = text.rstrip("\n") + "\n\n" + begin + previous.split(begin, 1)[1].split(end, 1)[0] + end + "\n"
    return text


# ---------------------------------------------------------------------------
# The scripts' flags (drn_jax.cli's vocabulary)
# ---------------------------------------------------------------------------

def define_batch_flags(values: flags.FlagValues, argv: Sequence[str], *, config_file: pathlib.Path,
                       output_dir: pathlib.Path | None, steps: int | None, steps_help: str) -> None:
    """Defines a batch script's flags in `values`: ``--output_dir``, ``--steps``, ``--only``,
    ``--train_dir`` (the training image folders), ``--data_dir`` (the benchmark sets), and
    ``--config.<field>=VALUE`` (a field of `config_file`'s config, for every run; `argv` are the
    arguments the flags will be parsed from, which ml_collections reads when the flag is defined)."""
    data = recipes.shared_data_dir()
    flags.DEFINE_string("output_dir", None if output_dir is None else str(output_dir), "folder of the run folders",
                        flag_values=values)
    flags.DEFINE_integer("steps", steps, steps_help, lower_bound=1, flag_values=values)
    flags.DEFINE_string("only", None, "comma-separated names of what to run; default: all", flag_values=values)
    flags.DEFINE_string("train_dir", str(data / "train"), "training images: its T91/ and BSD200/ folders, "
                        "else every image under it", flag_values=values)
    flags.DEFINE_string("data_dir", str(data / "benchmark"), "folder of the benchmark sets "
                        "(<data_dir>/Set5/HR/, <data_dir>/Set14/HR/)", flag_values=values)
    cli.define_config_file("config", str(config_file), f"give only --config.<field>=VALUE: a field of "
                           f"{config_file.name}'s config for every run", flag_values=values,
                           sys_argv=["", *argv])


def config_overrides(values: flags.FlagValues, argv: Sequence[str]) -> list[tuple[str, Any]]:
    """The ``--config.<field>=VALUE`` overrides in `values` (parsed from `argv`), in their order.

    The runs start from the script's config: ``--config=FILE`` itself is refused."""
    if any(arg.split("=", 1)[0] in ("--config", "-config") for arg in argv):
        raise ValueError("--config: the runs start from the script's config; give --config.<field>=VALUE")
    return list(config_flags.get_override_values(values["config"]).items())


def override_flags(overrides: Sequence[tuple[str, Any]]) -> str:
    """`overrides` as command-line flags, `` --config.<field>=VALUE`` each (for a command line)."""
    return "".join(" " + shlex.quote(f"--config.{key}={value}") for key, value in overrides)
