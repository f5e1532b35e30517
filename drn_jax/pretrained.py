"""Shipped pretrained DRNs: export a training run into the pretrained folder, and model cards.

The files and the folder are described in :mod:`drn_jax.zoo`; loading a model goes through
:func:`drn_jax.loading.load_model` (``pretrained=NAME``).

    python -m drn_jax.pretrained export --workdir runs/x4_291 --name x4 \\
        --card_from runs/x4_291/eval/results.json --data_description "T91 + BSD200"
    python -m drn_jax.pretrained list
    python eval.py --pretrained=x4 --data_dir=../shared/data/benchmark
    drn-upscale photo.png --output_dir up/ --pretrained x4

Model cards never hold a path of the machine that trained the model: the data is named by
what it is (``--data``), and the saved config's folder sources keep only the folders' names.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from drn_jax import cli, loading, models, plots, zoo
from drn_jax.files import write_atomic
from drn_jax.machine import machine_description
from drn_jax.metrics import METRICS
from drn_jax.reporting import format_duration

__all__ = ["available", "card_from_results", "export", "load_metadata", "model_card", "portable_source",
           "write_model_card", "main"]

CARD_DATASETS = ("Set5", "Set14")
available = zoo.available
load_metadata = zoo.load_metadata


def portable_source(spec: str | None) -> str | None:
    """A data source string without the machine's paths: each folder's last two parts.

    ``folder:/data/train/T91,/data/benchmark/Set5/HR`` -> ``folder:train/T91,Set5/HR``.
    """
    if not spec or not spec.startswith("folder:"):
        return spec
    return "folder:" + ",".join("/".join(pathlib.PurePath(item.strip()).parts[-2:])
                                for item in spec[len("folder:"):].split(","))


def card_from_results(results: str | pathlib.Path | Mapping[str, Any]) -> dict[str, Any]:
    """Model-card scores from an evaluation ``results.json`` (path or loaded dict).

    Returns ``{"scores": {dataset: {psnr, ssim, gradient_psnr, images}}, "bicubic": {...},
    "evaluation": {...}}``; ``evaluation`` keeps the protocol's settings (self-ensemble, tiling).
    """
    if not isinstance(results, Mapping):
        path = pathlib.Path(results)
        try:
            results = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file; run eval.py on the run first") from None
        except ValueError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
    scores = {name: {key: value[key] for key in (*METRICS, "images") if key in value}
              for name, value in results.items() if not name.startswith("_") and isinstance(value, Mapping)}
    if not scores:
        raise ValueError("the results hold no dataset scores")
    meta = results.get("_meta", {})
    evaluation = {key: meta[key] for key in ("scale", "label", "self_ensemble", "tile", "tile_overlap")
                  if key in meta}
    return {"scores": scores, "bicubic": meta.get("bicubic", {}), "evaluation": evaluation}


def export(source: str | os.PathLike, name: str, *, card: Mapping[str, Any] | None = None,
           path: str | os.PathLike | None = None) -> pathlib.Path:
    """Writes ``NAME.msgpack`` and ``NAME.json`` from a training run; returns the msgpack's path.

    Args:
      source: a training workdir (its latest checkpoint) or a step folder
        ``<workdir>/checkpoints/<step>``.
      name: the model's name (letters, digits, ``._-``), e.g. ``x4``.
      card: model-card data to store (e.g. ``{"scores": ..., "notes": ..., "data": "T91 + BSD200"}``);
        the run's steps, wall time and throughput (from its ``summary.json``) and this machine
        are added where ``card`` does not give them.
      path: the pretrained folder (default: :func:`drn_jax.zoo.directory`).
    """
    model_source = loading.ModelSource.of_path(source)
    loaded = loading.load_model(model_source)
    config, run = loaded.config.to_dict(), loaded.run
    for key in ("train", "val"):
        config["data"][key] = portable_source(config["data"][key])
    summary = run.summary()
    full_card: dict[str, Any] = {
        "data": config["data"]["train"],
        "steps": loaded.step,
        "batch_size": config["batch_size"],
        "hr_patch_size": config["data"]["hr_patch_size"],
        "wall_seconds": summary.get("wall_seconds"),
        "train_seconds": summary.get("train_seconds"),
        "images_per_second": summary.get("images_per_second"),
        "machine": machine_description(),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "source": (run.path.name if model_source.kind == "workdir"
                   else f"{run.path.name}/checkpoints/{loaded.step}"),
        "ema": bool(config.get("ema_decay", 0.0)),
    }
    span = _log_span(run.metrics_file)
    if span and span > (summary.get("wall_seconds") or 0):
        # Resumed: summary.json times the last process only; the log spans the whole run.
        full_card.update(wall_seconds=span, train_seconds=None, images_per_second=None)
    full_card.update(card or {})
    folder = zoo.directory(path)
    if run.metrics_file.is_file() and plots.load_eval_curve(run.metrics_file)[0]:
        curve = folder / f"{name}_curve.png"
        plots.plot_training_curves({f"{name} (validation: {portable_source(config['data']['val'])})":
                                    [run.metrics_file]}, curve, title=f"DRN {name}: validation PSNR",
                                   zoom=False)
        full_card["curve"] = curve.name
    params = loaded.variables["params"]
    metadata = {"config": config, "parameters": models.count_params(params), "card": full_card}
    return zoo.write(name, params, metadata, path)


def _log_span(metrics_file: pathlib.Path) -> float | None:
    """Seconds from the first to the last record of a run's metrics.jsonl (across resumes)."""
    if not metrics_file.is_file():
        return None
    times = []
    for line in metrics_file.read_text().splitlines():
        try:
            times.append(float(json.loads(line)["time"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
    return max(times) - min(times) if len(times) > 1 else None


def _duration(seconds: float | None) -> str:
    return format_duration(seconds, long=True) if seconds else "not recorded"


def _schedule(config: Mapping[str, Any]) -> str:
    rate, factor = config.get("learning_rate"), config.get("lr_decay_factor")
    warmup = f", {config['warmup_steps']} warm-up steps" if config.get("warmup_steps") else ""
    if config.get("lr_schedule", "step") == "cosine":
        return f"{rate}, cosine decay to ×{factor}{warmup}"
    return f"{rate}, ×{factor} every {config.get('lr_decay_every')} steps{warmup}"


def model_card(metadata: Mapping[str, Any]) -> str:
    """The Markdown model card of a pretrained model's metadata (``NAME.json``)."""
    name, card, config = metadata["name"], metadata.get("card", {}), metadata["config"]
    model = config.get("model", {})
    loss = config.get("loss", {})
    lines = [
        f"# Pretrained DRN `{name}`", "",
        f"x{config['scale']} DRN, {metadata['parameters']:,} parameters "
        f"(F {model.get('features')}, {model.get('modules_per_block')} residual modules per block, "
        f"dual {model.get('dual')}, progressive {model.get('progressive')}).", "",
        f"    python eval.py --pretrained={name} --data_dir=../shared/data/benchmark --datasets=Set5,Set14",
        f"    drn-upscale photo.png --output_dir upscaled/ --pretrained {name}", "",
        "## Training", "",
        "| | |", "|---|---|",
        f"| data | `{card.get('data')}` |",
        f"| loss | {loss.get('name')}, λ {loss.get('lam')}, dual weight {loss.get('dual_weight')} |",
        f"| steps | {card.get('steps')} (batch {card.get('batch_size')}, HR patch {card.get('hr_patch_size')}) |",
        f"| learning rate | {_schedule(config)}; parameter EMA {config.get('ema_decay')} |",
        *([f"| initialised from | `{card.get('init_from') or config['init_from']}` (warm start, "
           "docs/method.md) |"] if config.get("init_from") else []),
        f"| wall time | {_duration(card.get('wall_seconds'))} (training alone {_duration(card.get('train_seconds'))}) |",
    ]
    if card.get("images_per_second"):
        lines.append(f"| throughput | {card['images_per_second']:.1f} crops/s |")
    lines += [f"| machine | {card.get('machine')} |",
              f"| seed | {config.get('seed')} |",
              f"| exported | {card.get('exported')} from `{card.get('source')}` |", ""]
    scores = card.get("scores") or {}
    lines += ["## Scores", ""]
    if not scores:
        lines += ["Not evaluated: export with `--card_from <run>/eval/results.json`.", ""]
    else:
        scale = card.get("evaluation", {}).get("scale", config["scale"])
        lines += [f"x{scale}, Y channel, {scale} pixels shaved (`eval.py`'s protocol); "
                  "gradient PSNR: PSNR between the gradient magnitudes of the Y channels.", "",
                  "| dataset | images | " + " | ".join(spec.label for spec in METRICS.values())
                  + " | bicubic PSNR / SSIM |", "|---|---|" + "---|" * len(METRICS) + "---|"]
        datasets = [d for d in CARD_DATASETS if d in scores] + [d for d in scores if d not in CARD_DATASETS]
        for dataset in datasets:
            entry = scores[dataset]
            bicubic = card.get("bicubic", {}).get(dataset)
            bic = f"{bicubic['psnr']:.2f} / {bicubic['ssim']:.4f}" if bicubic else "-"
            values = " | ".join(f"{entry[key]:.{spec.digits}f}" if key in entry else "-"
                                for key, spec in METRICS.items())
            lines.append(f"| {dataset} | {entry.get('images', '-')} | {values} | {bic} |")
        lines.append("")
    if card.get("curve"):
        lines += ["## Training curve", "", f"![Set5 PSNR during training]({card['curve']})", ""]
    if card.get("notes"):
        lines += ["## Notes", "", str(card["notes"]), ""]
    return "\n".join(lines)


def write_model_card(name: str, path: str | pathlib.Path | None = None) -> pathlib.Path:
    """Writes ``NAME.md`` beside ``NAME.json``; returns its path."""
    folder = zoo.directory(path)
    return write_atomic(folder / f"{name}.md", model_card(zoo.load_metadata(name, folder)))


# ---------------------------------------------------------------------------
# Command line: python -m drn_jax.pretrained {list,export,card}
# ---------------------------------------------------------------------------

USAGE = """python -m drn_jax.pretrained COMMAND [flags]

  list                     the available models and their scores
  export --workdir=RUN --name=NAME [--card_from=RUN/eval/results.json] [--data_description=TEXT] [--notes=TEXT]
  card NAME                rewrite NAME.md from NAME.json
"""


def _define_flags(values: flags.FlagValues) -> None:
    cli.define_model_flags(values, what="exported")
    flags.DEFINE_string("name", None, "the model's name, e.g. x4", flag_values=values)
    flags.DEFINE_string("card_from", None, "an eval.py results.json of this run: its scores go into the card",
                        flag_values=values)
    flags.DEFINE_string("data_description", None, "what the training data is, e.g. 'T91 + BSD200' (default: the "
                        "source's folder names)", flag_values=values)
    flags.DEFINE_string("notes", None, "free text for the model card", flag_values=values)
    flags.DEFINE_string("machine", None, "the training machine, when not this one", flag_values=values)
    flags.DEFINE_string("pretrained_dir", None, f"pretrained folder (default: ${zoo.DIRECTORY_ENV} or the package's)",
                        flag_values=values)


def _list(folder: str | None) -> None:
    for name in zoo.available(folder):
        meta = zoo.load_metadata(name, folder)
        scores = meta.get("card", {}).get("scores", {})
        order = [d for d in CARD_DATASETS if d in scores] + [d for d in scores if d not in CARD_DATASETS]
        text = ", ".join(f"{d} {scores[d]['psnr']:.2f} dB" for d in order)
        print(f"{name}: x{meta['config']['scale']}, {meta['parameters']:,} parameters"
              + (f"; {text}" if text else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line (see `USAGE`); returns the exit status, 2 for usage errors."""
    return cli.console_command("drn_jax.pretrained", _define_flags, _run, argv)


def _run(rest: Sequence[str], values: flags.FlagValues) -> int:
    command = rest[0] if rest else None
    if command == "list" and len(rest) == 1:
        _list(values.pretrained_dir)
        return 0
    if command == "card" and len(rest) == 2:
        print(write_model_card(rest[1], values.pretrained_dir))
        return 0
    if command == "export" and len(rest) == 1:
        if not values.name:
            raise ValueError("export needs --name and one of --workdir or --checkpoint")
        source = cli.chosen_model(values)
        if source.kind == "pretrained":
            raise ValueError("export makes a pretrained model of a training run: give --workdir or --checkpoint")
        card: dict[str, Any] = {}
        if values.card_from:
            card.update(card_from_results(values.card_from))
        for key, flag in (("data", "data_description"), ("notes", "notes"), ("machine", "machine")):
            if values[flag].value:
                card[key] = values[flag].value
        params_path = export(source.location, values.name, card=card, path=values.pretrained_dir)
        card_path = write_model_card(values.name, values.pretrained_dir)
        print(f"exported {values.name}: {params_path} ({params_path.stat().st_size / 1e6:.2f} MB), "
              f"{params_path.with_suffix('.json')}, {card_path}")
        return 0
    raise ValueError(f"unknown command {' '.join(rest) or '(none)'!r}; usage: {' '.join(USAGE.split())}")


if __name__ == "__main__":
    sys.exit(main())
