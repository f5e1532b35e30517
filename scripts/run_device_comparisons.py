#!/usr/bin/env python3
"""The paper's two claims, Fig. 2 and Table 4, at 8,000 steps with two seeds each, on an accelerator.

docs/results.md's comparisons (scripts/run_comparisons.py) train 800 steps on the project's CPU,
and at that budget the differences are small against the seed noise. This script reruns the
comparisons of Fig. 2 (GS / MAE / MSE / Eq. 3 loss) and Table 4 (plain / dual / progressive /
dual + progressive) at 10x the steps with every setting at seeds 0 and 1: 7 settings (the
baseline belongs to both), 14 runs of ``configs/comparison.py``, built by run_comparisons'
``build_config``. They train in lockstep in one process (`drn_jax.lockstep`): each setting's two
seeds are one compiled program that scans 50 steps at a time, and every run of a seed sees that
seed's crops, as run_comparisons' runs do. Then each run is scored on Set5 and Set14 as
run_comparisons scores it, and the report is a block of docs/results.md in run_comparisons'
format.

It is made for a machine without network, TensorFlow, ml_collections or scikit-image (a GPU
machine with JAX, Flax, optax, orbax, Pillow and tensorboard), in three steps:

1. Here, once: pack what that machine lacks into ``.device_data/`` (git-ignored, about 46 MiB):
   T91 + BSD200 (lossless WebP) and Set5 + Set14 (their PNG files) in one tar file, and the
   pure-Python packages ml_collections and tifffile, copied from this environment::

       python scripts/run_device_comparisons.py prepare

2. On the device machine (the ``run`` tool; command, then carry list)::

       PYTHONPATH=.:.device_data/site python3 scripts/run_device_comparisons.py train --output_dir /tmp/cmp8k --export $OUT/comparisons_8k --max_minutes 9
       [".device_data"]

   It unpacks the images (checking every pixel against the pack's checksums), trains, scores,
   and copies each run's small files (no checkpoints) to ``$OUT/comparisons_8k``. It stops early,
   with the measured speed, when the speed after the first chunks says the runs would not end
   within ``--max_minutes`` (scoring included).

3. Here, with the folder it sent back::

       python scripts/run_device_comparisons.py report --output_dir <files_at>/comparisons_8k

   writes the block between ``<!-- device-comparisons:begin -->`` and ``<!-- device-comparisons:end -->``
   of docs/results.md (figures in docs/figures/*_8k.png); run_comparisons and run_pilots keep it.

``estimate`` prints the compiler's count of each setting's step (FLOPs, bytes) at full size and the
H200 time it implies. ``train --quick`` (a tiny network) is the smoke test
tests/test_device_comparisons.py runs on the CPU.

The command is the one argument that is not a flag; the four share one set of absl flags
(drn_jax.cli's vocabulary), each flag's help (``--help``) naming the commands that read it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import run_comparisons as rc  # beside this script: the comparisons' catalogue
from absl import flags
from PIL import Image

from drn_jax import cli
from drn_jax import experiments as ex
from drn_jax import image_io, lockstep, training
from drn_jax.errors import RunError
from drn_jax.files import write_atomic, write_json
from drn_jax.machine import machine_description
from drn_jax.model_factory import create_model
from drn_jax.reporting import format_duration
from drn_jax.train_state import create_optimizer, create_train_state

REPO = rc.REPO
DEFAULT_PACK_DIR = REPO / ".device_data"
PACK_NAME = "comparisons.tar"
SITE_NAME = "site"
MANIFEST = "manifest.json"
# Pure-Python packages the device machine lacks: ml_collections (configs) and tifffile (which
# drn_jax.image_io imports; it comes with scikit-image here).
CARRIED_PACKAGES = ("ml_collections", "tifffile")
# What the run tool carries: the working tree and the carried folders, 64 MiB in all.
CARRY_LIMIT = 64 << 20
DEFAULT_STEPS = 8000
DEFAULT_SEEDS = (0, 1)
# Fig. 2's and Table 4's settings; the baseline belongs to both.
SETTINGS = ("base", "mae", "mse", "gradient", "plain", "dual", "progressive")
COMPARISONS = ("fig2", "table4")
BEGIN, END = ex.KEPT_BLOCKS[1]
# Files of a run folder that --export copies (not checkpoints/ or tensorboard/).
EXPORTED = ("config.json", "metrics.jsonl", "summary.json", "results.json", "results.md", "per_image.csv",
            "log.txt")
# H200 SXM figures for the estimate: HBM3e bandwidth, dense float32 (no tensor cores) and TF32.
H200_BYTES_PER_SECOND = 4.8e12
H200_FP32_FLOPS = 67e12
H200_TF32_FLOPS = 495e12
# Seconds per kernel launched inside a compiled program, when kernels are tiny.
KERNEL_SECONDS = 4e-6


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------

def plan(seeds: Sequence[int] = DEFAULT_SEEDS, only: str | None = None) -> list[ex.Variant]:
    """The settings to train (run_comparisons' variants, every one with `seeds`), in order.

    `only`: comma-separated comparisons (fig2, table4) or settings (base, mae, ...).
    """
    names = list(SETTINGS)
    if only:
        wanted: set[str] = set()
        for item in (part.strip() for part in only.split(",") if part.strip()):
            if item in COMPARISONS:
                wanted.update(row.variant for row in rc.COMPARISON_BY_NAME[item].rows)
            elif item in SETTINGS:
                wanted.add(item)
            else:
                raise ValueError(f"--only: unknown name {item!r}; use {', '.join(COMPARISONS + SETTINGS)}")
        names = [name for name in names if name in wanted]
    return [dataclasses.replace(rc.VARIANT_BY_NAME[name], seeds=tuple(seeds)) for name in names]


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--seeds={text!r}: expected integers separated by commas, e.g. 0,1") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={text!r}: expected distinct integers, e.g. 0,1")
    return seeds


# ---------------------------------------------------------------------------
# The pack: images and packages for a machine without them
# ---------------------------------------------------------------------------

def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pixels_digest(pixels) -> str:
    return _digest(f"{pixels.shape}|{pixels.dtype}|".encode() + pixels.tobytes())


def pack_images(data_dir: pathlib.Path, benchmark_dir: pathlib.Path, pack: pathlib.Path) -> dict[str, Any]:
    """Writes `pack`, a tar file: the training images as lossless WebP, the benchmark files as they are.

    Training images are the files the ``folder:`` source lists under `data_dir`'s T91/ and
    BSD200/ (else `data_dir` itself), stored as the pixels `drn_jax.image_io.read_image` gives
    (WebP lossless: about two thirds of the PNG's size); unpacked, they are written back under
    their own names. Set5/HR and Set14/HR are stored byte for byte (their grey files are scored
    as grey). ``manifest.json`` lists every file with the checksum `unpack` checks. Returns the manifest.
    """
    source = ex.train_source(data_dir)[len("folder:"):].split(",")
    entries, blobs = [], []
    for folder in map(pathlib.Path, source):
        for path in image_io.list_images(folder):
            pixels = image_io.read_image(path)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="WEBP", lossless=True, quality=100, method=4, exact=True)
            packed = buffer.getvalue()
            with Image.open(io.BytesIO(packed)) as check:
                if _pixels_digest(np.asarray(check.convert("RGB"))) != _pixels_digest(pixels):
                    raise ValueError(f"{path}: its lossless WebP does not decode to the same pixels")
            target = f"train/{folder.name}/{path.relative_to(folder).as_posix()}"
            entries.append({"path": target, "member": target + ".webp", "kind": "pixels",
                            "shape": list(pixels.shape), "sha256": _pixels_digest(pixels)})
            blobs.append(packed)
    for dataset in ex.DATASETS:
        folder = benchmark_dir / dataset / "HR"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder; see --data_dir")
        for path in image_io.list_images(folder):
            raw = path.read_bytes()
            target = f"benchmark/{dataset}/HR/{path.relative_to(folder).as_posix()}"
            entries.append({"path": target, "member": target, "kind": "file", "sha256": _digest(raw)})
            blobs.append(raw)
    manifest = {"format": 1, "files": entries}

    def write_tar(file) -> None:
        with tarfile.open(fileobj=file, mode="w") as tar:
            for name, blob in [(MANIFEST, json.dumps(manifest, indent=1).encode()),
                               *((entry["member"], blob) for entry, blob in zip(entries, blobs))]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(blob), 0, 0o644
                tar.addfile(info, io.BytesIO(blob))

    write_atomic(pack, write_tar)
    return manifest


def unpack_images(pack: pathlib.Path, target: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes the pack's images under `target`; returns (training folder, benchmark folder).

    Every image is checked against the manifest: a training image's decoded pixels, read back
    from the written file as the training stream reads it, and a benchmark file's bytes.
    Raises ``ValueError`` naming the file on a mismatch.
    """
    if not pack.is_file():
        raise FileNotFoundError(f"{pack}: no such file; run `python scripts/run_device_comparisons.py prepare` "
                                "first, and carry .device_data to the device")
    with tarfile.open(pack) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())
        blobs = {entry["member"]: tar.extractfile(entry["member"]).read() for entry in manifest["files"]}

    def write(entry: dict[str, Any]) -> None:
        path = target / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = blobs[entry["member"]]
        if entry["kind"] == "file":
            if _digest(blob) != entry["sha256"]:
                raise ValueError(f"{pack}: {entry['member']} is damaged (checksum); run prepare again")
            path.write_bytes(blob)
            return
        try:
            with Image.open(io.BytesIO(blob)) as image:
                image.convert("RGB").save(path)  # in the format of the original's suffix
        except (OSError, ValueError) as err:
            raise ValueError(f"{pack}: {entry['member']} cannot be decoded ({err}); run prepare again") from None
        if _pixels_digest(image_io.read_image(path)) != entry["sha256"]:
            raise ValueError(f"{pack}: {entry['member']} does not give the packed pixels; run prepare again")

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(write, manifest["files"]))  # Pillow decodes and encodes outside the GIL
    return target / "train", target / "benchmark"


def copy_packages(site: pathlib.Path, names: Sequence[str] = CARRIED_PACKAGES) -> dict[str, str]:
    """Copies the installed pure-Python distributions `names` into `site` (a folder for
    PYTHONPATH); returns their versions. Refuses a distribution with compiled files."""
    if site.exists():
        shutil.rmtree(site)
    versions = {}
    for name in names:
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or ():
            parts = pathlib.PurePosixPath(file).parts
            if parts[0] == ".." or "__pycache__" in parts or file.suffix == ".pyc":
                continue  # scripts in bin/, byte code
            if file.suffix in (".so", ".pyd", ".dylib"):
                raise ValueError(f"{name} holds compiled code ({file}); only pure-Python packages can be carried")
            destination = site / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(distribution.locate_file(file), destination)
        versions[name] = distribution.version
    return versions


def _size(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def working_tree_bytes() -> int | None:
    """Bytes of the files the run tool copies (tracked and untracked, not ignored); None without git."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((REPO / os.fsdecode(name)).stat().st_size for name in listed
               if name and (REPO / os.fsdecode(name)).is_file())


def prepare(args: types.SimpleNamespace) -> int:
    to: pathlib.Path = args.pack_dir
    start = time.perf_counter()
    manifest = pack_images(args.train_dir, args.data_dir, to / PACK_NAME)
    versions = copy_packages(to / SITE_NAME)
    pack_bytes, site_bytes = _size(to / PACK_NAME), _size(to / SITE_NAME)
    tree = working_tree_bytes()
    counts = {}
    for entry in manifest["files"]:
        folder = entry["path"].rsplit("/", 1)[0]
        counts[folder] = counts.get(folder, 0) + 1
    print(f"{to / PACK_NAME}: {pack_bytes / 2**20:.1f} MiB ("
          + ", ".join(f"{folder} {count}" for folder, count in counts.items()) + ")")
    print(f"{to / SITE_NAME}: {site_bytes / 2**20:.1f} MiB (" + ", ".join(f"{k} {v}" for k, v in versions.items()) + ")")
    if tree is not None:
        total = tree + pack_bytes + site_bytes
        print(f"with the working tree ({tree / 2**20:.1f} MiB): {total / 2**20:.1f} MiB of the run tool's "
              f"{CARRY_LIMIT >> 20} MiB")
        if total > CARRY_LIMIT:
            raise ValueError(f"{to}: the carried files and the working tree exceed {CARRY_LIMIT >> 20} MiB")
    print(f"prepared in {time.perf_counter() - start:.0f} s; carry {os.path.relpath(to, REPO)}")
    return 0


# ---------------------------------------------------------------------------
# Training and scoring
# ---------------------------------------------------------------------------

def export_runs(out: pathlib.Path, runs: Sequence[ex.Run], export: pathlib.Path) -> None:
    """Copies each run's small files (see `EXPORTED`) and the state file to `export`."""
    for run in runs:
        for name in EXPORTED:
            source = out / run.name / name
            if source.is_file():
                (export / run.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, export / run.name / name)
    if (out / ex.STATE_FILE).is_file():
        export.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / ex.STATE_FILE, export / ex.STATE_FILE)


def _enable_compilation_cache(folder: pathlib.Path) -> None:
    # Scoring builds a network per run; runs of one architecture compile the same programs,
    # which the cache then loads instead of compiling again.
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def train(args: types.SimpleNamespace) -> int:
    start = time.perf_counter()
    deadline = time.monotonic() + 60 * (args.max_minutes - args.score_minutes) if args.max_minutes else None
    variants = plan(args.seeds, args.only)
    runs = ex.runs_of(variants)
    overrides = [*(rc.QUICK_OVERRIDES if args.quick else ()), *args.overrides]
    out: pathlib.Path = args.output_dir
    work = pathlib.Path(tempfile.mkdtemp(prefix="drn-device-data-")) if args.unpack is None else args.unpack
    try:
        data_dir, benchmark_dir = unpack_images(args.pack, work)
        print(f"unpacked {args.pack} in {time.perf_counter() - start:.0f} s", flush=True)
        configs = {run.name: rc.build_config(run, steps=args.steps, data_dir=data_dir, benchmark_dir=benchmark_dir,
                                             overrides=overrides) for run in runs}
        ex.check_settings(out, configs)
        out.mkdir(parents=True, exist_ok=True)
        _enable_compilation_cache(out / ".jax_cache")
        state = ex.read_json(out / ex.STATE_FILE) or {}
        state.update(machine=machine_description(), steps=args.steps, seeds=list(args.seeds),
                     overrides=[f"{k}={v!r}" for k, v in overrides], lockstep=True)
        state.setdefault("runs", {})

        def save_state() -> None:
            write_json(out / ex.STATE_FILE, state)

        save_state()
        todo = [run for run in runs if not (out / run.name / "summary.json").is_file()]
        status = 0
        if todo:
            print(f"training {len(todo)} runs of {args.steps} steps in lockstep: "
                  + ", ".join(run.name for run in todo), flush=True)
            trained_from = time.perf_counter()
            try:
                lockstep.train_in_lockstep(
                    [lockstep.LockstepRun(run.name, configs[run.name], out / run.name) for run in todo],
                    deadline=deadline, print_fn=lambda line: print(line, flush=True))
            except RunError as err:  # over the budget, or a non-finite loss: say which, keep the files
                print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
                status = 1
            state["train_seconds"] = time.perf_counter() - trained_from
            save_state()
        if status == 0:
            for index, run in enumerate(runs, 1):
                if (out / run.name / "results.json").is_file():
                    continue
                scored_from = time.perf_counter()
                scores = ex.evaluate_run(out / run.name, benchmark_dir)
                state["runs"][run.name] = {"score_seconds": time.perf_counter() - scored_from,
                                           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                save_state()
                print(f"[{index}/{len(runs)}] {run.name}: {ex.score_line(scores)}", flush=True)
        state["wall_seconds"] = time.perf_counter() - start
        save_state()
        print(f"done in {format_duration(time.perf_counter() - start)}", flush=True)
        return status
    finally:
        if args.export:
            export_runs(out, runs, args.export)
        if args.unpack is None:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

def report_block(out: pathlib.Path | None, report: pathlib.Path, variants: Sequence[ex.Variant],
                 command: str) -> str:
    """The block of docs/results.md, from the run folders in `out` (None or empty: not run yet)."""
    runs = ex.runs_of(variants)
    state = (ex.read_json(out / ex.STATE_FILE) if out is not None else None) or {}
    done = [run for run in runs if out is not None and (out / run.name / "results.json").is_file()]
    steps = state.get("steps", DEFAULT_STEPS)
    seeds = variants[0].seeds
    seeds_text = "two seeds" if len(seeds) == 2 else f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"
    where = f" on {state['machine']}" if state.get("machine") else " on an accelerator"
    lines = [BEGIN, "<!-- Generated by scripts/run_device_comparisons.py from the run folders it trains; "
             "do not edit by hand. -->", "", f"## Fig. 2 and Table 4 at {steps:,} steps, {seeds_text} each", ""]
    intro = (f"The first two comparisons above again, at {steps:,} steps ({steps / 800:g}x the 800 above) with "
             f"every setting at seeds {', '.join(map(str, seeds))}: {len(runs)} runs, trained in lockstep in one "
             f"process{where} (`drn_jax.lockstep`: one compiled program per setting steps its seeds together, "
             "each seed's crops shared by its runs) and scored as above. Everything else is the setup above: "
             "`configs/comparison.py`, T91 + BSD200, Set5 and Set14 x4.")
    if not done:
        return "\n".join(lines + [
            intro, "",
            "Not run yet: no accelerator was available in the session that wrote "
            "`scripts/run_device_comparisons.py` (issue 24), so the 800-step tables above are the "
            "current ones. The script is tested on the CPU at a tiny size; scripts/README.md gives the "
            "device command and its estimate, 5 to 7 minutes of an H200.", "", END])
    comparisons = [rc.COMPARISON_BY_NAME[name] for name in COMPARISONS]
    lines += [intro, "", "Reproduce with (scripts/README.md gives the device step):", "", f"    {command}", ""]
    lines += ex.setup_lines(out, runs, heading="###")
    sections, verdicts = ex.comparison_sections(out, report, comparisons, variants, heading="###",
                                                title_suffix=f" ({steps:,} steps)", figure_suffix="_8k")
    lines += sections + ex.overall_lines(out, verdicts, variants, heading="###")
    lines += ex.runs_table(out, runs, heading="###")
    return "\n".join(lines).rstrip("\n") + "\n" + END


def write_block(report: pathlib.Path, block: str) -> str:
    """Puts `block` into `report`: in place of the old one, else before the pilots' block, else last."""
    text = report.read_text() if report.is_file() else ""
    text = ex.put_block(text, block, BEGIN, END, before=ex.KEPT_BLOCKS[0][0])
    write_atomic(report, text)
    return text


def report(args: types.SimpleNamespace) -> int:
    out = args.output_dir
    if out is not None and not out.is_dir():
        raise FileNotFoundError(f"{out}: no such folder; pass the folder `train --export` wrote")
    state = (ex.read_json(out / ex.STATE_FILE) or {}) if out is not None else {}
    variants = plan(state.get("seeds", DEFAULT_SEEDS))
    command = "python scripts/run_device_comparisons.py train --output_dir runs/comparisons_8k"
    if state.get("steps", DEFAULT_STEPS) != DEFAULT_STEPS:
        command += f" --steps {state['steps']}"
    if state.get("overrides"):
        command += ex.override_flags([ex.parse_override(o) for o in state["overrides"]])
    write_block(args.report, report_block(out, args.report, variants, command))
    print(f"report: {args.report}")
    return 0


# ---------------------------------------------------------------------------
# The H200 estimate
# ---------------------------------------------------------------------------

def estimate(args: types.SimpleNamespace) -> int:
    """Compiles each setting's step for two seeds at full size (XLA's convolutions, as on a GPU)
    and prints the compiler's FLOPs and bytes, and the H200 time they imply for the batch."""
    variants = plan(args.seeds, args.only)
    mesh = training.make_mesh(jax.local_devices()[:1])
    totals = {"flops": 0.0, "bytes": 0.0, "convolutions": 0, "instructions": 0}
    print(f"{'setting':12s} {'GFLOP/step':>11s} {'GB/step':>8s} {'convs':>6s} {'HLO ops':>8s}")
    for variant in variants:
        run = ex.Run(ex.run_name(variant.name, variant.seeds[0]), variant, variant.seeds[0])
        config = rc.build_config(run, steps=args.steps, data_dir=pathlib.Path("."), benchmark_dir=pathlib.Path("."),
                                 overrides=[("model.conv", "xla")])
        model, optimizer = create_model(config), create_optimizer(config)
        states = jax.eval_shape(lambda: jax.tree.map(lambda *leaves: jnp.stack(leaves), *(
            create_train_state(config, model, optimizer, jax.random.key(seed)) for seed in variant.seeds)))
        step = training.make_train_step(config, model, optimizer, mesh)
        patch = config.data.hr_patch_size
        batch = jax.ShapeDtypeStruct((len(variant.seeds), config.batch_size, patch, patch, 3), jnp.uint8)
        compiled = jax.jit(jax.vmap(step)).lower(states, batch).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        text = compiled.as_text()
        convolutions = text.count(" convolution(")
        instructions = sum(1 for line in text.splitlines() if " = " in line and "ENTRY" not in line)
        totals["flops"] += cost["flops"]
        totals["bytes"] += cost["bytes accessed"]
        totals["convolutions"] += convolutions
        totals["instructions"] += instructions
        print(f"{variant.name:12s} {cost['flops'] / 1e9:11.1f} {cost['bytes accessed'] / 1e9:8.2f} "
              f"{convolutions:6d} {instructions:8d}", flush=True)
    steps = args.steps
    flops, bytes_ = totals["flops"] * steps, totals["bytes"] * steps
    print(f"{'all':12s} {totals['flops'] / 1e9:11.1f} {totals['bytes'] / 1e9:8.2f} "
          f"{totals['convolutions']:6d} {totals['instructions']:8d}")
    print(f"{steps} steps: {flops / 1e12:.0f} TFLOP, {bytes_ / 1e12:.1f} TB moved (XLA CPU's count, float32)")
    print(f"H200 bounds: memory {bytes_ / H200_BYTES_PER_SECOND:.0f} s at {H200_BYTES_PER_SECOND / 1e12:.1f} TB/s; "
          f"compute {flops / H200_FP32_FLOPS:.0f} s at float32's {H200_FP32_FLOPS / 1e12:.0f} TFLOP/s "
          f"({flops / H200_TF32_FLOPS:.0f} s at TF32's {H200_TF32_FLOPS / 1e12:.0f}); launches "
          f"{totals['convolutions'] * 3 * steps * KERNEL_SECONDS:.0f} s at 3 kernels per convolution, "
          f"{KERNEL_SECONDS * 1e6:.0f} us each")
    return 0


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    """The flags of the four commands (drn_jax.cli's vocabulary), in `values`."""
    ex.define_batch_flags(values, argv, config_file=rc.CONFIG_FILE, output_dir=None, steps=DEFAULT_STEPS,
                          steps_help="train, estimate: training steps of every run")
    values["output_dir"].help = ("train: folder of the run folders (required); report: the folder "
                                 "`train --export` wrote (default: none, the not-run-yet note)")
    values["only"].help = ("train, estimate: comma-separated comparisons (fig2, table4) or settings (base, "
                           "mae, mse, gradient, plain, dual, progressive); default: all")
    values["train_dir"].help = "prepare: " + values["train_dir"].help
    values["data_dir"].help = "prepare: " + values["data_dir"].help
    flags.DEFINE_string("seeds", ",".join(map(str, DEFAULT_SEEDS)), "train, estimate: seeds of every setting",
                        flag_values=values)
    flags.DEFINE_string("pack_dir", str(DEFAULT_PACK_DIR), "prepare: the folder to carry", flag_values=values)
    flags.DEFINE_string("pack", str(DEFAULT_PACK_DIR / PACK_NAME), "train: the pack `prepare` wrote",
                        flag_values=values)
    flags.DEFINE_string("unpack", None, "train: where to unpack the images (default: a temporary folder)",
                        flag_values=values)
    flags.DEFINE_string("export", None, "train: copy each run's small files (no checkpoints) here at the end",
                        flag_values=values)
    flags.DEFINE_float("max_minutes", None, "train: stop training, with the measured speed, when it would not "
                       "end in time to score within this many minutes of the start (default: no limit)",
                       flag_values=values)
    flags.DEFINE_float("score_minutes", 2.0, "train: minutes kept for scoring out of --max_minutes",
                       flag_values=values)
    flags.DEFINE_bool("quick", False, "train: a tiny network and crops, for a smoke test: "
                      + ", ".join(f"{k}={v}" for k, v in rc.QUICK_OVERRIDES), flag_values=values)
    flags.DEFINE_string("report", str(rc.DEFAULT_REPORT), "report: the Markdown report", flag_values=values)


COMMANDS = ("prepare", "train", "report", "estimate")


def _arguments(command: str, values: flags.FlagValues, argv: Sequence[str]) -> types.SimpleNamespace:
    """The flags as the commands read them: paths absolute, seeds parsed, overrides listed."""
    args = types.SimpleNamespace(command=command, seeds=parse_seeds(values["seeds"].value),
                              overrides=ex.config_overrides(values, argv))
    for name in ("steps", "only", "max_minutes", "score_minutes", "quick"):
        setattr(args, name, values[name].value)
    for name in ("train_dir", "data_dir", "pack_dir", "pack", "output_dir", "unpack", "export", "report"):
        value = values[name].value
        setattr(args, name, None if value is None else pathlib.Path(value).expanduser().absolute())
    if command == "train" and args.output_dir is None:
        raise ValueError("train: give --output_dir, the folder of the run folders")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)

    def body(rest: Sequence[str], values: flags.FlagValues) -> int:
        if len(rest) != 1 or rest[0] not in COMMANDS:
            raise ValueError(f"give one command of {', '.join(COMMANDS)} (got {' '.join(rest) or 'none'})")
        command = {"prepare": prepare, "train": train, "report": report, "estimate": estimate}[rest[0]]
        return command(_arguments(rest[0], values, argv))

    return ex.run_script(lambda: cli.console_command(
        "run_device_comparisons.py", lambda values: define_flags(values, argv), body, argv))


if __name__ == "__main__":
    sys.exit(main())
