#!/usr/bin/env python3
"""Short pilots of the shipped x4 recipe, side by side, and their table in docs/results.md.

    python scripts/run_pilots.py --output_dir runs/pilots                  # the screen: train, evaluate, report
    python scripts/run_pilots.py --output_dir runs/pilots --stage confirm  # the leaders, 1500 steps
    python scripts/run_pilots.py --output_dir runs/pilots --report_only

Every pilot is the first shipped x4 recipe (``configs/x4_291.py`` with the values of `BASE`) at
``--steps`` steps (default 400; its two step decays scale with the step count) with one setting
changed: the schedule, the learning rate, width and depth,
the HR patch, the batch, the parameter EMA, the loss. All use seed 0 (the seed keys the initial
weights and the order of the crops); the baseline also runs with seed 1, which measures how far
a score moves with the seed alone. Each pilot is then scored on Set5 and Set14 x4 with eval.py's
protocol. The table says which setting the long run should take; how much a setting's lead
after a few hundred steps survives a long run is a judgement, made in the configs' docstrings.

The report replaces the block between ``<!-- pilots:begin -->`` and ``<!-- pilots:end -->`` in
``--report`` (appending it when absent); ``scripts/run_comparisons.py`` keeps that block when it
rewrites the rest of the file. The block also lists the shipped models (their cards), the long
runs the pilots chose for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402  (after the TensorFlow log level)

from drn_jax import cli  # noqa: E402
from drn_jax import config as config_lib  # noqa: E402
from drn_jax import experiments as ex  # noqa: E402
from drn_jax import plots, zoo  # noqa: E402
from drn_jax.files import write_atomic  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "configs" / "x4_291.py"
DEFAULT_STEPS = 400
STATE_FILE = "pilots.json"


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BEGIN, END = ex.KEPT_BLOCKS[0]  # the block of docs/results.md this script owns
DEFAULT_REPORT = REPO / "docs" / "results.md"


# The recipe the pilots start from: the first shipped x4 model's, pinned here so that the pilots
# stay reproducible when configs/x4_291.py takes what they found.
BASE: tuple[tuple[str, Any], ...] = (
    ("model.features", 32), ("model.modules_per_block", 6), ("data.hr_patch_size", 64), ("batch_size", 16),
    ("learning_rate", 4e-4), ("lr_schedule", "step"), ("lr_decay_factor", 0.3), ("warmup_steps", 0),
    ("ema_decay", 0.999), ("loss.name", "gs"), ("loss.lam", 2.0), ("loss.dual_weight", 0.1),
)


@dataclasses.dataclass(frozen=True)
class Pilot:
    name: str
    group: str
    label: str
    overrides: tuple[tuple[str, Any], ...] = ()
    seed: int = 0


def _pilots(steps: int) -> tuple[Pilot, ...]:
    warmup = max(1, steps // 20)
    return (
        Pilot("base", "baseline", "x4_291 recipe: step decay ×0.3 at 5/12 and 10/12, lr 4e-4, F 32 R 6, "
              "patch 64, batch 16, EMA 0.999, GS loss"),
        Pilot("base-s1", "baseline", "the same, seed 1", seed=1),
        Pilot("cosine", "schedule", "cosine decay to 0.05×", (("lr_schedule", "cosine"), ("lr_decay_factor", 0.05))),
        Pilot("cosine-warmup", "schedule", f"cosine decay to 0.05×, {warmup}-step warm-up",
              (("lr_schedule", "cosine"), ("lr_decay_factor", 0.05), ("warmup_steps", warmup))),
        Pilot("lr2e-4", "learning rate", "lr 2e-4", (("learning_rate", 2e-4),)),
        Pilot("lr8e-4", "learning rate", "lr 8e-4", (("learning_rate", 8e-4),)),
        Pilot("f48r4", "width/depth", "F 48, R 4 (wider, shallower)",
              (("model.features", 48), ("model.modules_per_block", 4))),
        Pilot("f32r9", "width/depth", "F 32, R 9 (deeper)", (("model.modules_per_block", 9),)),
        Pilot("patch96", "HR patch", "HR patch 96", (("data.hr_patch_size", 96),)),
        Pilot("batch32", "batch", "batch 32", (("batch_size", 32),)),
        Pilot("no-ema", "EMA", "no parameter EMA (raw parameters)", (("ema_decay", 0.0),)),
        Pilot("l1", "loss", "MAE (ℓ1) instead of the GS loss", (("loss.name", "l1"),)),
        Pilot("pixel-gradient", "loss", "MAE + 2·gradient loss (Eq. 3) instead of the GS loss",
              (("loss.name", "pixel_gradient"),)),
    )


def _confirmations(steps: int) -> tuple[Pilot, ...]:
    """The screen's leaders, alone and combined, run longer against the baseline."""
    lr, wide = ("learning_rate", 8e-4), (("model.features", 48), ("model.modules_per_block", 4))
    loss = ("loss.name", "pixel_gradient")
    return (
        Pilot("base", "baseline", "x4_291 recipe (lr 4e-4, F 32 R 6, GS loss)"),
        Pilot("lr8e-4", "learning rate", "lr 8e-4", (lr,)),
        Pilot("lr8e-4-pg", "combined", "lr 8e-4, MAE + 2·gradient loss (Eq. 3)", (lr, loss)),
        Pilot("lr8e-4-pg-f48r4", "combined", "lr 8e-4, Eq. 3 loss, F 48 R 4", (lr, loss, *wide)),
    )


@dataclasses.dataclass(frozen=True)
class Stage:
    """A batch of pilots: which, how long, where (a subfolder of --output_dir), and its figure."""

    pilots: Any  # steps -> tuple[Pilot, ...]
    steps: int
    folder: str
    figure: str
    title: str
    text: str


STAGES = {
    "screen": Stage(_pilots, DEFAULT_STEPS, ".", "pilots_x4", "Pilots: choosing the recipe of the shipped models",
                    "Each pilot is the first shipped x4 recipe (`configs/x4_291.py` as it was) trained for "
                    "{steps} steps (its two step decays scale with the step count) with one setting changed, "
                    "seed 0, on T91 + BSD200; scored on Set5 and Set14 x4 (Y, shave 4). Δ is against the "
                    "baseline; the baseline's seed-1 run shows how far a score moves with the seed alone. "
                    "Time is the wall time of the training run, on {machine}."),
    "confirm": Stage(_confirmations, 1500, "confirm", "confirm_x4", "Confirmation: the leaders, longer",
                     "The screen's leaders, alone and combined, trained for {steps} steps each (seed 0; the "
                     "decays scale with the steps), against the baseline: which lead lasts beyond the first "
                     "few hundred steps. On {machine}."),
}


def build_config(pilot: Pilot, *, steps: int, data_dir: pathlib.Path, benchmark_dir: pathlib.Path,
                 overrides: Sequence[tuple[str, Any]] = ()):
    """configs/x4_291.py at `steps`, then the pilot's overrides and seed."""
    config = _load("drn_pilot_config", CONFIG_FILE).get_config(str(steps))
    for key, value in BASE:
        config_lib.override(config, key, value)
    config.lr_decay_every = max(1, round(steps * 5 / 12))  # two decays, at 5/12 and 10/12
    config.data.train = ex.train_source(data_dir)
    config.data.val = f"folder:{benchmark_dir / 'Set5' / 'HR'}"
    config.eval_every_steps = max(1, steps // 8)
    config.checkpoint_every_steps = max(1, steps // 2)
    config.log_every_steps = max(1, min(50, steps // 8))
    for key, value in (*pilot.overrides, *overrides):
        config_lib.override(config, key, value)
    config.seed = pilot.seed
    return config


def run_all(pilots: Sequence[Pilot], batch: ex.Batch) -> int:
    """Trains and scores every pilot that is not done (the comparisons' loop); returns the exit status."""
    jobs = [ex.Job(p.name, f"{p.name} ({p.label})", build_config(
        p, steps=batch.steps, data_dir=batch.data_dir, benchmark_dir=batch.benchmark_dir, overrides=batch.overrides))
        for p in pilots]
    return ex.train_and_score(jobs, batch)


# ---------------------------------------------------------------------------
# The report block
# ---------------------------------------------------------------------------

def _scores(out: pathlib.Path, name: str) -> dict[str, dict[str, float]] | None:
    results = ex.read_json(out / name / "results.json")
    if not results or not all(d in results for d in ex.DATASETS):
        return None
    return {d: {m: float(results[d][m]) for m in ex.METRICS} for d in ex.DATASETS}


def pilot_lines(out: pathlib.Path, stage: Stage, report: pathlib.Path, command: str) -> list[str]:
    """The table (and figure) of one stage, from its run folders under `out`."""
    out = out / stage.folder
    state = ex.read_json(out / STATE_FILE) or {}
    steps = state.get("steps", stage.steps)
    pilots = stage.pilots(steps)
    results = {p.name: _scores(out, p.name) for p in pilots}
    summaries = {p.name: ex.read_json(out / p.name / "summary.json") for p in pilots}
    base = results.get("base")
    noise = None
    if base and results.get("base-s1"):
        noise = {d: abs(base[d]["psnr"] - results["base-s1"][d]["psnr"]) for d in ex.DATASETS}
    lines = [
        f"## {stage.title}", "",
        stage.text.format(steps=steps, machine=state.get("machine", "this machine")), "",
        "Reproduce with:", "", f"    {command}", "",
        "| group | setting | Set5 PSNR | Δ | Set14 PSNR | Δ | Set5 SSIM | Set14 grad. PSNR | time | crops/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pilot in pilots:
        scores, summary = results[pilot.name], summaries[pilot.name] or {}
        if scores is None:
            lines.append(f"| {pilot.group} | {pilot.label} | not run | | | | | | | |")
            continue

        def delta(dataset: str) -> str:
            if base is None or pilot.name == "base":
                return "-"
            return f"{scores[dataset]['psnr'] - base[dataset]['psnr']:+.2f}"

        rate = summary.get("images_per_second")
        lines.append(
            f"| {pilot.group} | {pilot.label} | {scores['Set5']['psnr']:.2f} | {delta('Set5')} | "
            f"{scores['Set14']['psnr']:.2f} | {delta('Set14')} | {scores['Set5']['ssim']:.4f} | "
            f"{scores['Set14']['gradient_psnr']:.2f} | {ex.duration(summary.get('wall_seconds'))} | "
            f"{f'{rate:.0f}' if rate else '-'} |")
    if noise:
        lines += ["", "Seed alone (baseline, seed 0 vs 1): "
                  + ", ".join(f"{d} {noise[d]:.2f} dB" for d in ex.DATASETS) + "."]
    curves = {p.label if len(p.label) < 40 else p.name: [out / p.name / "metrics.jsonl"] for p in pilots
              if p.seed == 0 and (out / p.name / "metrics.jsonl").is_file()
              and plots.load_eval_curve(out / p.name / "metrics.jsonl")[0]}
    if curves:
        figure = plots.plot_training_curves(curves, report.parent / "figures" / f"{stage.figure}.png",
                                            title=f"{stage.title.split(':')[0]} ({steps} steps, Set5 x4)")
        lines += ["", f"![{stage.title}: Set5 PSNR against steps]({os.path.relpath(figure, report.parent)})"]
    return lines + [""]


def final_lines() -> list[str]:
    """The shipped models, from their cards: the long runs the pilots chose for."""
    lines = ["## Final runs: the shipped models", "",
             "From the model cards in `drn_jax/pretrained/` (`python -m drn_jax.pretrained list`); "
             "each card names its config, steps, wall time and machine.", "",
             "| model | config | params | steps | wall time | Set5 PSNR / SSIM | Set14 PSNR / SSIM |",
             "|---|---|---|---|---|---|---|"]
    for name in zoo.available():
        metadata = zoo.load_metadata(name)
        card = metadata.get("card", {})
        scores = card.get("scores", {})

        def cell(dataset: str) -> str:
            entry = scores.get(dataset)
            return f"{entry['psnr']:.2f} / {entry['ssim']:.4f}" if entry else "-"

        lines.append(f"| `{name}` | `configs/{pathlib.Path(card.get('source', '-')).name}.py` | {metadata.get('parameters', 0):,} | "
                     f"{card.get('steps', '-')} | {ex.duration(card.get('wall_seconds'))} | "
                     f"{cell('Set5')} | {cell('Set14')} |")
    return lines + [""]


def _command(out: pathlib.Path, stage: str, steps: int, overrides: Sequence[tuple[str, Any]]) -> str:
    command = f"python scripts/run_pilots.py --output_dir {os.path.relpath(out, REPO)}"
    command += f" --stage {stage}" * (stage != "screen")
    command += f" --steps {steps}" * (steps != STAGES[stage].steps)
    return command + ex.override_flags(overrides)


def _section(text: str, title: str) -> list[str]:
    """The lines of the ``## title`` section of this script's block in `text` (empty if absent)."""
    if BEGIN not in text or END not in text:
        return []
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].splitlines()
    start = next((i for i, line in enumerate(block) if line == f"## {title}"), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(block)) if block[i].startswith("## ")), len(block))
    return block[start:end]


def write_report(out: pathlib.Path, report: pathlib.Path) -> str:
    """Replaces (or appends) this script's block of `report`: every stage run under `out`."""
    text = report.read_text() if report.is_file() else ""
    lines = []
    for name, stage in STAGES.items():
        folder = out / stage.folder
        state = ex.read_json(folder / STATE_FILE)
        ran = state is not None or any((folder / p.name / "results.json").is_file()
                                       for p in stage.pilots(stage.steps))
        if not ran:
            # No run folders here (a fresh checkout): keep the section the report already has,
            # so that --report_only after a new shipped model only refreshes the final runs.
            lines += _section(text, stage.title)
            continue
        # From the recorded settings, in today's flags (older state files hold an older command).
        state = state or {}
        command = _command(out, name, state.get("steps", stage.steps),
                           [ex.parse_override(o) for o in state.get("overrides", [])])
        lines += pilot_lines(out, stage, report, command)
    block = "\n".join([BEGIN, "<!-- Generated by scripts/run_pilots.py from the pilot folders and the "
                       "shipped model cards; do not edit by hand. -->", "", *lines, *final_lines(), END])
    text = ex.put_block(text, block, BEGIN, END)
    write_atomic(report, text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)

    def define_flags(values: flags.FlagValues) -> None:
        ex.define_batch_flags(values, argv, config_file=CONFIG_FILE, output_dir=REPO / "runs" / "pilots",
                              steps=None, steps_help="steps of every pilot (default: the stage's, 400 or 1500)")
        values["only"].help = "comma-separated pilot names; default: all"
        flags.DEFINE_enum("stage", "screen", tuple(STAGES), "screen: one setting changed per pilot; "
                          "confirm: the leaders, longer", flag_values=values)
        flags.DEFINE_string("report", str(DEFAULT_REPORT), "the Markdown report", flag_values=values)
        flags.DEFINE_bool("report_only", False, "only rewrite the report block", flag_values=values)

    def body(rest: Sequence[str], values: flags.FlagValues) -> int:
        if rest:
            raise ValueError(f"unexpected arguments {' '.join(rest)}; see --helpfull")
        return _main(values, ex.config_overrides(values, argv))

    return ex.run_script(lambda: cli.console_command("run_pilots.py", define_flags, body, argv))


def _selected(pilots: Sequence[Pilot], only: str | None) -> tuple[Pilot, ...]:
    if not only:
        return tuple(pilots)
    names = {n.strip() for n in only.split(",") if n.strip()}
    unknown = names - {p.name for p in pilots}
    if unknown:
        raise ValueError(f"--only: unknown pilot(s) {', '.join(sorted(unknown))}; "
                         f"use {', '.join(p.name for p in pilots)}")
    return tuple(p for p in pilots if p.name in names)


def _main(values: flags.FlagValues, overrides: Sequence[tuple[str, Any]]) -> int:
    stage = STAGES[values["stage"].value]
    steps = stage.steps if values["steps"].value is None else values["steps"].value
    pilots = _selected(stage.pilots(steps), values["only"].value)
    root, train_dir, data_dir, report = (pathlib.Path(values[name].value).expanduser().absolute()
                                         for name in ("output_dir", "train_dir", "data_dir", "report"))
    batch = ex.Batch(root / stage.folder, steps, train_dir, data_dir, overrides, STATE_FILE)
    status = 0
    if not values["report_only"].value:
        status = run_all(pilots, batch)
    write_report(root, report)
    print(f"report: {report}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
