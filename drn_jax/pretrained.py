"""Shipped pretrained DRNs: export a training checkpoint, list and load what the package holds.

A pretrained model ``NAME`` is three files in the pretrained folder (by default
``drn_jax/pretrained/`` inside the package, shipped as package data):

* ``NAME.msgpack``: the parameters, ``flax.serialization.msgpack_serialize`` of the params tree
  (the EMA parameters when the run kept an EMA, as :func:`drn_jax.checkpointing.load_for_inference`
  picks them);
* ``NAME.json``: ``{"name", "format", "config", "parameters", "params_sha256", "card"}``. ``config``
  is the training run's whole config (``scale`` and ``model.*`` rebuild the network, the rest
  documents the run); ``card`` is the model card (data, steps, wall time, machine, scores);
* ``NAME.md``: the model card as Markdown, written by the command line.

    python -m drn_jax.pretrained export --workdir runs/x4_291 --name x4 \\
        --card-from runs/x4_291/eval/results.json
    python -m drn_jax.pretrained list
    python eval.py --pretrained=x4 --data_dir=../shared/data/benchmark
    drn-upscale photo.png --output_dir up/ --pretrained x4

Set ``DRN_PRETRAINED_DIR`` (or pass ``directory=``) to use another folder, e.g. in tests, which
must never write into the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DIRECTORY_ENV", "FORMAT", "PACKAGE_DIRECTORY", "available", "card_from_results",
           "cpu_description", "directory", "export", "load", "load_metadata", "machine_description", "model_card",
           "write_model_card", "main"]

DIRECTORY_ENV = "DRN_PRETRAINED_DIR"
PACKAGE_DIRECTORY = pathlib.Path(__file__).resolve().parent / "pretrained"
FORMAT = 1
CARD_DATASETS = ("Set5", "Set14")
METRICS = ("psnr", "ssim", "gradient_psnr")


def directory(path: str | pathlib.Path | None = None) -> pathlib.Path:
    """The pretrained folder: ``path``, else ``$DRN_PRETRAINED_DIR``, else the package's."""
    if path is not None:
        return pathlib.Path(path).expanduser()
    env = os.environ.get(DIRECTORY_ENV, "").strip()
    return pathlib.Path(env).expanduser() if env else PACKAGE_DIRECTORY


def available(path: str | pathlib.Path | None = None) -> list[str]:
    """Names of the complete models (``.msgpack`` and ``.json``) in the pretrained folder, sorted."""
    folder = directory(path)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.msgpack") if p.with_suffix(".json").is_file())


def _unknown(name: str, folder: pathlib.Path) -> FileNotFoundError:
    names = available(folder)
    return FileNotFoundError(
        f"no pretrained model {name!r} in {folder}; available: {', '.join(names) if names else 'none'}")


def load_metadata(name: str, path: str | pathlib.Path | None = None) -> dict[str, Any]:
    """The ``NAME.json`` of a pretrained model (config, parameter count, hash, model card)."""
    folder = directory(path)
    if name not in available(folder):
        raise _unknown(name, folder)
    meta_path = folder / f"{name}.json"
    try:
        return json.loads(meta_path.read_text())
    except ValueError as err:
        raise ValueError(f"{meta_path}: not JSON ({err})") from None


def load(name: str, path: str | pathlib.Path | None = None):
    """``(config, model, variables)`` of the pretrained model ``name``, as a checkpoint would give.

    Raises ``FileNotFoundError`` naming the available models when ``name`` is unknown, and
    ``ValueError`` when the files do not match (corrupted or from another model).
    """
    import flax.serialization
    import jax
    import jax.numpy as jnp

    from drn_jax import config as config_lib
    from drn_jax import training

    folder = directory(path)
    meta = load_metadata(name, folder)
    params_path = folder / f"{name}.msgpack"
    data = params_path.read_bytes()
    expected_hash = meta.get("params_sha256")
    if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"{params_path}: its sha256 differs from {name}.json's; the file is "
                         "corrupted or from another export; export it again")
    config = config_lib.from_saved(meta["config"])
    model = training.create_model(config)
    try:
        params = flax.serialization.msgpack_restore(data)
    except Exception as err:  # noqa: BLE001 - msgpack raises several types
        raise ValueError(f"{params_path}: cannot be read ({' '.join(str(err).split())[:200]})") from None
    expected = jax.eval_shape(model.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))["params"]
    want = {jax.tree_util.keystr(k): (tuple(v.shape), str(v.dtype))
            for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(k): (tuple(v.shape), str(v.dtype))
           for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if want != got:
        differing = sorted(set(want.items()) ^ set(got.items()))[:1]
        raise ValueError(f"{params_path}: its parameters do not fit the model of {name}.json "
                         f"(first difference: {differing[0][0] if differing else '?'}); export it again")
    # The saved tree holds NumPy arrays; arrays on the device keep them bit for bit.
    return config, model, {"params": jax.tree.map(jnp.asarray, params)}


# ---------------------------------------------------------------------------
# Export and model cards
# ---------------------------------------------------------------------------

def cpu_description() -> str:
    """This machine's CPU model and core count, e.g. ``"Intel(R) Xeon(R) Processor, 2 cores"``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def machine_description() -> str:
    """This machine in one line: CPU model and cores (or accelerators), JAX backend and version."""
    import jax

    backend = jax.default_backend()
    devices = jax.devices()
    where = cpu_description() if backend == "cpu" else f"{len(devices)} x {devices[0].device_kind}"
    return f"{where}; jax {jax.__version__} ({backend})"


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


def _resolve_source(source: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None]:
    """``(workdir, checkpoint step folder or None)`` of a workdir or a step folder."""
    path = pathlib.Path(source).expanduser()
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, path
    return path, None


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def export(source: str | pathlib.Path, name: str, *, card: Mapping[str, Any] | None = None,
           path: str | pathlib.Path | None = None) -> pathlib.Path:
    """Writes ``NAME.msgpack`` and ``NAME.json`` from a training run; returns the msgpack's path.

    Args:
      source: a training workdir (its latest checkpoint) or a step folder
        ``<workdir>/checkpoints/<step>``.
      name: the model's name (letters, digits, ``._-``), e.g. ``x4``.
      card: model-card data to store (e.g. ``{"scores": ..., "notes": ...}``); the run's data,
        steps, wall time and throughput (from its ``summary.json``) and this machine are added
        where ``card`` does not give them.
      path: the pretrained folder (default: :func:`directory`).
    """
    import flax.serialization
    import jax
    import numpy as np

    from drn_jax import checkpointing, models

    if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise ValueError(f"--name={name!r}: use letters, digits, '.', '_' and '-'")
    workdir, checkpoint = _resolve_source(source)
    config, model, variables = checkpointing.load_for_inference(
        workdir=None if checkpoint else workdir, checkpoint=checkpoint)
    params = jax.tree.map(np.asarray, jax.device_get(variables["params"]))
    data = flax.serialization.msgpack_serialize(params)

    summary: dict[str, Any] = {}
    summary_path = workdir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    step = int(checkpoint.name) if checkpoint else summary.get("step")
    if step is None:
        step = _latest_step(workdir)
    full_card: dict[str, Any] = {
        "data": config.data.train,
        "steps": step,
        "batch_size": config.batch_size,
        "hr_patch_size": config.data.hr_patch_size,
        "wall_seconds": summary.get("wall_seconds"),
        "train_seconds": summary.get("train_seconds"),
        "images_per_second": summary.get("images_per_second"),
        "machine": machine_description(),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "source": str(checkpoint or workdir),
        "ema": bool(config.get("ema_decay", 0.0)),
    }
    full_card.update(card or {})
    metadata = {
        "name": name,
        "format": FORMAT,
        "config": config.to_dict(),
        "parameters": models.count_params(params),
        "params_sha256": hashlib.sha256(data).hexdigest(),
        "card": full_card,
    }
    folder = directory(path)
    folder.mkdir(parents=True, exist_ok=True)
    params_path = folder / f"{name}.msgpack"
    _write_atomic(params_path, data)
    from drn_jax.reporting import _jsonable

    _write_atomic(folder / f"{name}.json",
                  (json.dumps(metadata, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())
    return params_path


def _latest_step(workdir: pathlib.Path) -> int | None:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps) if steps else None


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "not recorded"
    minutes = seconds / 60
    return f"{minutes:.0f} min ({seconds / 3600:.2f} h)" if minutes >= 1 else f"{seconds:.1f} s"


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
        f"| learning rate | {config.get('learning_rate')}, ×{config.get('lr_decay_factor')} every "
        f"{config.get('lr_decay_every')} steps; parameter EMA {config.get('ema_decay')} |",
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
        lines += ["Not evaluated: export with `--card-from <run>/eval/results.json`.", ""]
    else:
        scale = card.get("evaluation", {}).get("scale", config["scale"])
        lines += [f"x{scale}, Y channel, {scale} pixels shaved (`eval.py`'s protocol); "
                  "gradient PSNR: PSNR between the gradient magnitudes of the Y channels.", "",
                  "| dataset | images | PSNR | SSIM | gradient PSNR | bicubic PSNR / SSIM |",
                  "|---|---|---|---|---|---|"]
        datasets = [d for d in CARD_DATASETS if d in scores] + [d for d in scores if d not in CARD_DATASETS]
        for dataset in datasets:
            entry = scores[dataset]
            bicubic = card.get("bicubic", {}).get(dataset)
            bic = f"{bicubic['psnr']:.2f} / {bicubic['ssim']:.4f}" if bicubic else "-"
            lines.append(f"| {dataset} | {entry.get('images', '-')} | {entry['psnr']:.2f} | "
                         f"{entry['ssim']:.4f} | {entry['gradient_psnr']:.2f} | {bic} |")
        lines.append("")
    if card.get("notes"):
        lines += ["## Notes", "", str(card["notes"]), ""]
    return "\n".join(lines)


def write_model_card(name: str, path: str | pathlib.Path | None = None) -> pathlib.Path:
    """Writes ``NAME.md`` beside ``NAME.json``; returns its path."""
    folder = directory(path)
    target = folder / f"{name}.md"
    _write_atomic(target, model_card(load_metadata(name, folder)).encode())
    return target


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drn_jax.pretrained",
                                     description="Export, list and describe shipped pretrained DRNs.")
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export", help="write NAME.msgpack, NAME.json and NAME.md from a run")
    source = export_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training workdir (its latest checkpoint)")
    source.add_argument("--checkpoint", help="a checkpoint step folder <workdir>/checkpoints/<step>")
    export_parser.add_argument("--name", required=True, help="the model's name, e.g. x4")
    export_parser.add_argument("--card-from", dest="card_from",
                               help="an eval.py results.json of this run: its scores go into the card")
    export_parser.add_argument("--notes", help="free text for the model card")
    export_parser.add_argument("--machine", help="the training machine, when not this one")
    export_parser.add_argument("--dir", help=f"pretrained folder (default: ${DIRECTORY_ENV} or the package's)")
    list_parser = commands.add_parser("list", help="the available models")
    list_parser.add_argument("--dir", help="pretrained folder")
    card_parser = commands.add_parser("card", help="rewrite NAME.md from NAME.json")
    card_parser.add_argument("name")
    card_parser.add_argument("--dir", help="pretrained folder")
    args = parser.parse_args(argv)

    try:
        if args.command == "list":
            for name in available(args.dir):
                meta = load_metadata(name, args.dir)
                scores = meta.get("card", {}).get("scores", {})
                order = [d for d in CARD_DATASETS if d in scores] + [d for d in scores if d not in CARD_DATASETS]
                text = ", ".join(f"{d} {scores[d]['psnr']:.2f} dB" for d in order)
                print(f"{name}: x{meta['config']['scale']}, {meta['parameters']:,} parameters"
                      + (f"; {text}" if text else ""))
            return 0
        if args.command == "card":
            print(write_model_card(args.name, args.dir))
            return 0
        card: dict[str, Any] = {}
        if args.card_from:
            card.update(card_from_results(args.card_from))
        if args.notes:
            card["notes"] = args.notes
        if args.machine:
            card["machine"] = args.machine
        params_path = export(args.checkpoint or args.workdir, args.name, card=card, path=args.dir)
        card_path = write_model_card(args.name, args.dir)
        print(f"exported {args.name}: {params_path} ({params_path.stat().st_size / 1e6:.2f} MB), "
              f"{params_path.with_suffix('.json')}, {card_path}")
        return 0
    except (OSError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
