#!/usr/bin/env python3
"""Compiles drn-jax's programs for TPU slices ahead of time, on a machine without a TPU.

    python benchmarks/tpu_aot.py                                  # every program, every topology
    python benchmarks/tpu_aot.py --topologies=v5e-4 --programs=train --configs=x4 --batches=16
    python benchmarks/tpu_aot.py --table benchmarks/results/tpu_aot.jsonl   # the Markdown tables

Needs libtpu (`pip install -e ".[tpu]"`): its compiler compiles for a described topology
(`jax.experimental.topologies.get_topology_desc`) with no TPU attached. Each topology runs in a
process of its own, with the TPU environment set before JAX is imported.

The programs are the package's own, handed a mesh made from the topology's devices:

* ``train``: `drn_jax.training.make_train_step` (what train.py runs) for configs/x4.py and
  configs/x8.py, at the global batches of ``--batches`` (a number, or ``max``: the largest
  per-chip batch that fits the chip's memory, found by compiling), with and without remat.
* ``validate``: the training validator's network call (`evaluation.make_validator` ->
  `inference.ModelRunner`), the config's model (bfloat16), at eval.py's size buckets for
  Set5 and Set14, on one chip.
* ``eval``: eval.py's network call (`inference.ModelRunner` of `loading.load_model`'s model),
  float32 as the shipped models are, at the same buckets, on one chip.
* ``tile``: drn-upscale's tile program (`inference.ModelRunner` over the host's chips, one
  256² LR tile per chip, ``--dtype=bfloat16``).

Single-chip programs depend on the chip only, so they are compiled once per chip type.

For each program it writes one JSON line (``--output``): whether it compiled (or the compiler's
error, in one line), per-device memory from ``compiled.memory_analysis()`` against the chip's
HBM, FLOPs and bytes accessed per device from ``compiled.cost_analysis()``, the analytic FLOPs
(`drn_jax.flops`), the roofline time ``max(FLOPs / peak, bytes / bandwidth)`` with the images per
second per chip it allows and the share of the bf16 peak, the collectives of the optimised HLO,
whether any op of the CPU-only Winograd kernels (`drn_jax/ops/winograd.py`) is in it, and the
bytes of the optimised HLO's instructions by where their ops come from (the network, the bicubic
pyramid, the loss, the optimiser). These are the compiler's estimates of programs that were not
run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import hlo_text  # noqa: E402  (benchmarks/, beside this file)


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation's published per-chip figures."""

    name: str
    bf16_flops: float  # dense bfloat16 peak, FLOP/s
    hbm_bandwidth: float  # bytes/s
    hbm_bytes: int


GIB = 1 << 30
# Google Cloud's published per-chip figures: https://cloud.google.com/tpu/docs/system-architecture-tpu-vm
# and the per-version pages https://cloud.google.com/tpu/docs/v4, /tpu/docs/v5e, /tpu/docs/v5p, /tpu/docs/v6e.
CHIPS = {
    "v4": Chip("v4", 275e12, 1228e9, 32 * GIB),
    "v5e": Chip("v5e", 197e12, 819e9, 16 * GIB),
    "v5p": Chip("v5p", 459e12, 2765e9, 95 * GIB),
    "v6e": Chip("v6e", 918e12, 1640e9, 32 * GIB),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A named TPU slice: its topology for `get_topology_desc`, its accelerator type, its chip."""

    name: str
    topology: str
    accelerator_type: str
    chip: str
    chips: int
    hosts: int
    # libtpu describes a v4 slice by TensorCores, two per chip (JAX's megacore mode, one device
    # per chip, is not what a deviceless topology gives): each device has half a chip.
    devices_per_chip: int = 1


def device_chip(chip: str, devices_per_chip: int = 1) -> Chip:
    """The figures of one device: the chip's, divided among its devices."""
    c = CHIPS[chip]
    return Chip(c.name, c.bf16_flops / devices_per_chip, c.hbm_bandwidth / devices_per_chip,
                c.hbm_bytes // devices_per_chip)


TOPOLOGIES = {t.name: t for t in (
    Topology("v4-8", "v4:2x2x1", "v4-8", "v4", 4, 1, devices_per_chip=2),
    Topology("v5e-4", "v5e:2x2", "v5litepod-4", "v5e", 4, 1),
    Topology("v5e-8", "v5e:2x4", "v5litepod-8", "v5e", 8, 1),
    Topology("v5e-16", "v5e:4x4", "v5litepod-16", "v5e", 16, 4),
    Topology("v6e-4", "v6e:2x2", "v6e-4", "v6e", 4, 1),
    Topology("v5p-8", "v5p:2x2x1", "v5p-8", "v5p", 4, 1),
)}
PROGRAMS = ("train", "validate", "eval", "tile")
CONFIGS = {"x4": "configs/x4.py", "x8": "configs/x8.py"}
# eval.py's size buckets (`inference.bucket_size` of the LR images' longer side) for Set5 and Set14.
EVAL_BUCKETS = {2: (128, 192, 256, 384), 4: (64, 96, 128, 192), 8: (32, 48, 64, 96)}
UPSCALE_TILE = 512  # drn_jax.upscale.DEFAULT_TILE (checked in the worker)
BATCH_STEP = 8  # the largest per-chip batch is searched in multiples of this
MEMORY_SEARCH_COMPILES = 4
# Where an op of the optimised HLO came from, by its innermost source file.
CATEGORIES = (("resize.py", "pyramid"), ("losses.py", "loss"), ("ops/winograd.py", "network"),
              ("ops/", "network"), ("models.py", "network"), ("flax/", "network"), ("optax/", "optimizer"),
              ("train_state.py", "optimizer"), ("training.py", "step"))

_TOPOLOGIES = flags.DEFINE_list("topologies", list(TOPOLOGIES), f"slices to compile for: {', '.join(TOPOLOGIES)}")
_PROGRAMS = flags.DEFINE_list("programs", list(PROGRAMS), f"programs: {', '.join(PROGRAMS)}")
_CONFIGS = flags.DEFINE_list("configs", list(CONFIGS), "training configs: x4, x8")
_BATCHES = flags.DEFINE_list("batches", ["16", "max"], "train: global batches, or max (largest per chip that fits)")
_REMAT = flags.DEFINE_list("remat", ["false", "true"], "train: config.model.remat values")
_TRAIN_TOPOLOGIES = flags.DEFINE_list("max_batch_topologies", ["v5e-4", "v5e-16"],
                                      "topologies where batch max is searched (each search is several compiles)")
_BUCKETS = flags.DEFINE_list("buckets", [], "validate/eval: LR sides (default: eval.py's Set5+Set14 buckets)")
_FEATURES = flags.DEFINE_integer("features", 0, "override model.features (0: the config's)")
_MODULES = flags.DEFINE_integer("modules_per_block", 0, "override model.modules_per_block (0: the config's)")
_PATCH = flags.DEFINE_integer("hr_patch_size", 0, "override data.hr_patch_size (0: the config's)")
_TILE = flags.DEFINE_integer("tile", UPSCALE_TILE, "tile: the LR tile side")
_CONV = flags.DEFINE_string("conv", "", "override model.conv of train/validate (default: the config's auto): "
                            "xla or packed")
_TRAIN_DTYPE = flags.DEFINE_string("train_dtype", "", "override model.dtype of train/validate (default: the config's)")
_OUT = flags.DEFINE_string("output", str(REPO / "benchmarks" / "results" / "tpu_aot.jsonl"), "JSON lines, appended")
_HLO_DIR = flags.DEFINE_string("hlo_dir", "", "also write each optimised HLO text here")
_TABLE = flags.DEFINE_string("table", "", "print the Markdown tables of this JSON-lines file and exit")
_REANALYSE = flags.DEFINE_string("reanalyse", "", "recompute --output's HLO-derived fields from the HLO texts "
                                  "in this folder (--hlo_dir of the runs) and exit")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "--table: also each training step's bytes by network part")
_CROP_RATES = flags.DEFINE_list("crop_rates", ["1:986", "4:2890"],
                                 "--table: K:crops per CPU second of the tfds: stream (benchmarks/tfds_jpeg.py, "
                                 "docs/performance.md), for the host cores per chip")
_CROP_HR = flags.DEFINE_integer("crop_hr", 192, "--table: the HR patch those crop rates were measured at")
_SKIP = flags.DEFINE_bool("skip_compiled", False, "leave out the cells already compiled in --output (a rerun "
                           "that completes a matrix)")
_WORKER = flags.DEFINE_string("worker", "", "internal: compile for this topology in this process")
_TIMEOUT = flags.DEFINE_integer("timeout", 6 * 3600, "seconds per topology process")


# ---------------------------------------------------------------------------
# The parent: one process per topology
# ---------------------------------------------------------------------------

def topology_env(topology: Topology) -> dict[str, str]:
    """The environment libtpu needs to describe `topology` without a TPU (set before JAX is imported)."""
    env = dict(os.environ)
    env.update(TPU_SKIP_MDS_QUERY="1", TPU_ACCELERATOR_TYPE=topology.accelerator_type,
               TPU_WORKER_HOSTNAMES="localhost", JAX_PLATFORMS="cpu",
               # libtpu otherwise takes /tmp/libtpu_lockfile, as if it drove a TPU: one process at a time.
               ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_all(argv: list[str]) -> int:
    unknown = [name for name in _TOPOLOGIES.value if name not in TOPOLOGIES]
    if unknown:
        raise app.UsageError(f"unknown topologies {unknown}; use {', '.join(TOPOLOGIES)}")
    failed = 0
    for name in _TOPOLOGIES.value:
        command = [sys.executable, __file__, *sys.argv[1:], f"--worker={name}"]
        start = time.perf_counter()
        print(f"{name}: compiling ({' '.join(_PROGRAMS.value)})", file=sys.stderr, flush=True)
        result = subprocess.run(command, env=topology_env(TOPOLOGIES[name]), timeout=_TIMEOUT.value)
        print(f"{name}: done in {time.perf_counter() - start:.0f} s (exit {result.returncode})",
              file=sys.stderr, flush=True)
        failed += result.returncode != 0
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# The worker: compiles the programs for one topology
# ---------------------------------------------------------------------------

def load_config(name: str):
    spec = importlib.util.spec_from_file_location(f"drn_config_{name}", REPO / CONFIGS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if _FEATURES.value:
        config.model.features = _FEATURES.value
    if _MODULES.value:
        config.model.modules_per_block = _MODULES.value
    if _PATCH.value:
        config.data.hr_patch_size = _PATCH.value
    if _TRAIN_DTYPE.value:
        config.model.dtype = _TRAIN_DTYPE.value
    if _CONV.value:
        config.model.conv = _CONV.value
    return config


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:400]


def category(source: str) -> str:
    return next((name for key, name in CATEGORIES if key in source), "other")


def kind_of(instruction: hlo_text.Instruction, convolution_fusions: set[str]) -> str:
    """What an entry instruction is: a convolution (fused or not), a copy between layouts, a
    move between memory spaces (async copies and slices), another fusion, or its opcode."""
    if instruction.opcode == "convolution" or (instruction.opcode == "fusion"
                                               and instruction.called in convolution_fusions):
        return "convolution"
    if instruction.opcode == "copy":
        return "layout copy"
    if instruction.opcode in ("copy-start", "slice-start", "custom-call"):
        return "memory-space move"
    return "other fusion" if instruction.opcode == "fusion" else instruction.opcode


def layer(op_name: str, source_category: str) -> str:
    """The network part an op belongs to, from its JAX name stack (Flax module paths), and
    whether it is of the backward pass: ``"residual@1 backward"``, ``"upsample@0 forward"``, ..."""
    direction = "backward" if "transpose(" in op_name else "forward"
    if "dual_blocks" in op_name:
        return f"dual blocks {direction}"
    block = re.search(r"primal_blocks_(\d+)", op_name)
    for part in ("residual", "upsample", "to_rgb", "head"):
        if block and f"/{part}" in op_name:
            return f"{part}@{block.group(1)} {direction}"
    return f"{source_category} {direction}" if source_category == "network" else source_category


def analyse(compiled, lowered, chip: Chip) -> dict:
    """The compiler's figures for one compiled program (per device)."""
    record: dict = {}
    memory = compiled.memory_analysis()
    if memory is not None:
        arguments, temporaries = memory.argument_size_in_bytes, memory.temp_size_in_bytes
        outputs, aliased = memory.output_size_in_bytes, memory.alias_size_in_bytes
        record["memory"] = {"arguments": arguments, "temporaries": temporaries, "outputs": outputs,
                            "aliased": aliased, "code": memory.generated_code_size_in_bytes,
                            # Donated arguments are reused for the outputs they alias.
                            "total": arguments + temporaries + outputs - aliased,
                            "hbm": chip.hbm_bytes}
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    record["flops"] = float(costs.get("flops", 0.0))
    record["bytes_accessed"] = float(costs.get("bytes accessed", 0.0))
    record["transcendentals"] = float(costs.get("transcendentals", 0.0))
    text = compiled.as_text()
    record.update(analyse_text(text))
    return record, text


def analyse_text(text: str) -> dict:
    """What the optimised HLO text says: collectives, Winograd ops, convolutions, bytes by source."""
    record: dict = {}
    module = hlo_text.parse_module(text)
    record["collectives"] = summarise_collectives(hlo_text.collectives(module))
    winograd = [i for i in module.instructions.values() if "ops/winograd.py" in module.source_file(i)]
    record["winograd_ops"] = len(winograd)
    record["winograd_file_in_hlo"] = any(path.endswith("ops/winograd.py") for path in module.files)
    record["convolutions"] = sum(i.opcode == "convolution" for i in module.instructions.values())
    by_category: dict[str, dict[str, float]] = {}
    by_layer: dict[str, dict[str, float]] = {}
    by_kind: dict[str, dict[str, float]] = {}
    by_minor: dict[str, list[float]] = {}  # the minor dimension's size -> [padded, logical] bytes
    convolution_fusions = {i.computation for i in module.instructions.values() if i.opcode == "convolution"}
    fusions = []
    for instruction in module.entry:
        moved = hlo_text.instruction_bytes(module, instruction)
        if not moved:
            continue
        origin = module.origin_instruction(instruction)
        name = category(module.source_file(origin))
        part = by_layer.setdefault(layer(origin.op_name, name), {"bytes": 0.0, "hbm_bytes": 0.0, "estimated_cycles": 0})
        part["bytes"] += moved
        part["hbm_bytes"] += hlo_text.instruction_bytes(module, instruction, on_chip=False)
        part["estimated_cycles"] += instruction.estimated_cycles
        kind = kind_of(instruction, convolution_fusions)
        what = by_kind.setdefault(kind, {"bytes": 0.0, "hbm_bytes": 0.0, "instructions": 0, "estimated_cycles": 0})
        what["bytes"] += moved
        what["hbm_bytes"] += hlo_text.instruction_bytes(module, instruction, on_chip=False)
        what["instructions"] += 1
        what["estimated_cycles"] += instruction.estimated_cycles
        for array in module.operand_arrays(instruction) + instruction.arrays:
            if array.dims and array.minor_to_major:
                sizes = by_minor.setdefault(str(array.dims[array.minor_to_major[0]]), [0.0, 0.0])
                sizes[0] += array.padded_bytes
                sizes[1] += array.logical_bytes
        entry = by_category.setdefault(name, {"bytes": 0.0, "hbm_bytes": 0.0, "logical_bytes": 0.0,
                                              "instructions": 0, "estimated_cycles": 0})
        entry["bytes"] += moved
        entry["hbm_bytes"] += hlo_text.instruction_bytes(module, instruction, on_chip=False)
        entry["logical_bytes"] += hlo_text.instruction_bytes(module, instruction, padded=False)
        entry["instructions"] += 1
        entry["estimated_cycles"] += instruction.estimated_cycles
        fusions.append((moved, name, instruction))
    record["bytes_by_category"] = by_category
    record["bytes_by_layer"] = by_layer
    record["bytes_by_kind"] = by_kind
    record["bytes_by_minor_dimension"] = dict(sorted(by_minor.items(), key=lambda item: -item[1][0])[:8])
    for key in ("bytes", "hbm_bytes", "logical_bytes", "estimated_cycles"):
        record[f"hlo_{key}"] = sum(entry[key] for entry in by_category.values())
    fusions.sort(key=lambda item: -item[0])
    record["top_instructions"] = [
        {"bytes": moved, "category": name, "opcode": i.opcode, "op_name": i.op_name[-120:],
         "shape": i.shape[:160], "operands": [module.instructions[o].shape[:100] for o in i.operands
                                              if o in module.instructions][:4]}
        for moved, name, i in fusions[:25]]
    return record


def summarise_collectives(found: list[dict]) -> list[dict]:
    summary: dict[tuple, dict] = {}
    for item in found:
        key = (item["kind"], tuple(item["dtypes"]))
        entry = summary.setdefault(key, {"kind": item["kind"], "dtypes": item["dtypes"], "count": 0,
                                         "bytes": 0.0, "arrays": 0})
        entry["count"] += 1
        entry["bytes"] += item["bytes"]
        entry["arrays"] += item["arrays"]
    return list(summary.values())


def roofline(record: dict, chip: Chip, images: int) -> None:
    """Adds the roofline time, the images per second per chip it allows, and the share of peak."""
    flops, moved = record.get("flops", 0.0), record.get("bytes_accessed", 0.0)
    if not flops or not moved:
        return
    compute_s, memory_s = flops / chip.bf16_flops, moved / chip.hbm_bandwidth
    seconds = max(compute_s, memory_s)
    record.update(roofline_s=seconds, bound="memory" if memory_s >= compute_s else "compute",
                  images_per_s_per_chip=images / seconds, peak_share=compute_s / seconds,
                  bytes_per_image=moved / images)
    # cost_analysis counts every memory space; on TPU large arrays may live in on-chip memory
    # (S(1) in the layouts), which costs no HBM bandwidth. The same bound from the HLO's
    # arrays outside it:
    hbm = record.get("hlo_hbm_bytes")
    if hbm:
        hbm_s = max(compute_s, hbm / chip.hbm_bandwidth)
        record.update(roofline_hbm_s=hbm_s, images_per_s_per_chip_hbm=images / hbm_s,
                      peak_share_hbm=compute_s / hbm_s, hbm_bytes_per_image=hbm / images)


class Worker:
    """Compiles every asked-for program for one topology, one JSON line each."""

    def __init__(self, topology: Topology):
        import jax
        from jax.experimental import topologies

        self.topology = topology
        self.chip = device_chip(topology.chip, topology.devices_per_chip)
        self.desc = topologies.get_topology_desc(topology_name=topology.topology, platform="tpu")
        self.devices = list(self.desc.devices)
        if len(self.devices) != topology.chips * topology.devices_per_chip:
            raise RuntimeError(f"{topology.name}: {len(self.devices)} devices, expected "
                               f"{topology.chips * topology.devices_per_chip}")
        self.platform = self.devices[0].platform
        self.device_kind = self.devices[0].device_kind
        self.jax = jax
        self.out = pathlib.Path(_OUT.value)
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, record: dict) -> None:
        if record.get("skipped"):
            print(f"{record['program']} {record.get('config')} {record.get('global_batch') or record.get('lr_side')}: "
                  "compiled before, skipped", flush=True)
            return
        record = {"topology": self.topology.name, "chip": self.chip.name, "device_kind": self.device_kind,
                  "chips": self.topology.chips, "hosts": self.topology.hosts, "jax": self.jax.__version__,
                  "devices_per_chip": self.topology.devices_per_chip,
                  **record}
        line = json.dumps(record)
        with open(self.out, "a") as handle:
            handle.write(line + "\n")
        short = {k: record.get(k) for k in ("program", "config", "global_batch", "per_chip_batch", "remat",
                                            "lr_side", "dtype", "compiled", "compile_s", "error")}
        print(json.dumps(short), flush=True)

    def done_before(self, base: dict) -> dict | None:
        """With --skip_compiled: the record of this cell already in --output, if it compiled."""
        if not _SKIP.value or not self.out.exists():
            return None
        keys = [k for k in base if k != "conv"]
        for line in reversed(self.out.read_text().splitlines()):
            r = json.loads(line) if line.strip() else {}
            if (r.get("topology") == self.topology.name and r.get("compiled")
                    and all(r.get(k) == base[k] for k in keys)
                    and (not _CONV.value or r.get("conv") == _CONV.value)):
                return r
        return None

    def compile(self, lowered_fn, base: dict, images: int, analytic: int) -> dict:
        """Lowers and compiles; returns the record (also when the compiler refuses)."""
        previous = self.done_before(base)
        if previous is not None:
            return {**previous, "skipped": True}
        record = base  # the lowering fills in what it learns (the model's conv)
        start = time.perf_counter()
        try:
            lowered = lowered_fn()
            compiled = lowered.compile()
        except Exception as err:  # the compiler's error is a result, in one line
            record.update(compiled=False, error=one_line(err), compile_s=time.perf_counter() - start)
            record["out_of_memory"] = "RESOURCE_EXHAUSTED" in str(err) or "memory" in str(err).lower()
            return record
        record.update(compiled=True, compile_s=time.perf_counter() - start)
        analysis, text = analyse(compiled, lowered, self.chip)
        record.update(analysis)
        record["analytic_flops"] = analytic
        record["flops_ratio"] = record["flops"] / analytic if analytic else None
        roofline(record, self.chip, images)
        if "memory" in record:
            record["fits"] = record["memory"]["total"] <= self.chip.hbm_bytes
        if _HLO_DIR.value:
            folder = pathlib.Path(_HLO_DIR.value)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / hlo_file_name({**record, "topology": self.topology.name})).write_text(text)
        return record

    # --- train ---------------------------------------------------------------------------

    def train(self, name: str, global_batch: int, remat: bool) -> dict:
        import jax
        import jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec

        from drn_jax import config as config_lib
        from drn_jax import flops, model_factory, training
        from drn_jax.train_state import create_optimizer, create_train_state

        config = load_config(name)
        config.batch_size = global_batch
        config.model.remat = remat
        n = len(self.devices)
        base = {"program": "train", "config": name, "global_batch": global_batch, "per_chip_batch": global_batch // n,
                "remat": remat, "hr": config.data.hr_patch_size, "dtype": config.model.dtype,
                "features": config.model.features, "modules_per_block": config.model.modules_per_block}

        def lower():
            config_lib.validate(config, num_devices=n, num_processes=self.topology.hosts)
            model = model_factory.create_model(config, platform=self.platform)
            base["conv"] = model.conv
            optimizer = create_optimizer(config)
            mesh = training.make_mesh(self.devices)  # train.py's mesh, of the slice's devices
            abstract = jax.eval_shape(lambda key: create_train_state(config, model, optimizer, key),
                                      jax.random.key(config.seed))
            replicated = NamedSharding(mesh, PartitionSpec())
            state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
                                 abstract)
            patch = config.data.hr_patch_size
            hr = jax.ShapeDtypeStruct((global_batch, patch, patch, 3), jnp.uint8,
                                      sharding=NamedSharding(mesh, PartitionSpec(training.DATA_AXIS)))
            return training.make_train_step(config, model, optimizer, mesh).lower(state, hr)

        analytic = flops.expected_flops(
            config.scale, config.data.hr_patch_size // config.scale, global_batch // n, config.model.features,
            config.model.modules_per_block, config.model.dual, config.model.progressive,
            training=True, remat=remat)
        record = self.compile(lower, base, global_batch // n, analytic)
        record["floor_bytes_per_image"] = floor_bytes_per_image(record)
        return record

    def largest_batch(self, name: str, remat: bool, known: dict | None) -> None:
        """Compiles at growing per-chip batches (a linear memory model from the compiles so far)
        until the largest multiple of BATCH_STEP that fits is bracketed; emits each compile."""
        n = len(self.devices)
        points: list[tuple[int, dict]] = []
        if known and known.get("compiled"):
            points.append((known["per_chip_batch"], known))
        points += self._compiled_before(name, remat)  # earlier runs' compiles of the same step
        fits, fails = 0, None
        for _ in range(MEMORY_SEARCH_COMPILES):
            good = [(b, r) for b, r in points if r.get("compiled") and r.get("fits")]
            if good:
                fits = max(fits, max(b for b, _ in good))
            bad = [b for b, r in points if not (r.get("compiled") and r.get("fits"))]
            if bad:
                fails = min(bad) if fails is None else min(fails, min(bad))
            if fails is not None and fails - fits <= BATCH_STEP:
                break
            guess = self._predict(points)
            if guess is None:
                guess = 2 * max(fits, BATCH_STEP)
            guess = max(BATCH_STEP, guess // BATCH_STEP * BATCH_STEP)
            if fails is not None:
                guess = min(guess, fails - BATCH_STEP)
            if guess <= fits:
                guess = fits + BATCH_STEP
            if fails is not None and guess >= fails:
                break
            record = self.train(name, guess * n, remat)
            record["search"] = "max"
            self.emit(record)
            points.append((guess, record))
        summary = {"program": "train_max", "config": name, "remat": remat, "per_chip_batch": fits,
                   "first_failing_per_chip_batch": fails, "step": BATCH_STEP,
                   "largest_compiled": max((b for b, r in points if r.get("compiled")), default=None)}
        self.emit(summary)

    def _compiled_before(self, name: str, remat: bool) -> list[tuple[int, dict]]:
        """(per-chip batch, record) of the training steps of this config already in ``--output``."""
        if not self.out.exists():
            return []
        config = load_config(name)
        same = dict(topology=self.topology.name, program="train", config=name, remat=remat,
                    hr=config.data.hr_patch_size, dtype=config.model.dtype, features=config.model.features,
                    modules_per_block=config.model.modules_per_block)
        found = {}
        for r in map(json.loads, filter(str.strip, open(self.out))):
            if all(r.get(k) == v for k, v in same.items()) and (r.get("compiled") or r.get("out_of_memory")):
                found[r["per_chip_batch"]] = r
        return sorted(found.items())

    @staticmethod
    def _predict(points: list[tuple[int, dict]]) -> int | None:
        """The batch where total memory reaches 95% of HBM, by a line through the compiled points."""
        measured = sorted((b, r["memory"]["total"], r["memory"]["hbm"], r["memory"]["arguments"])
                          for b, r in points if r.get("compiled") and "memory" in r)
        if not measured:
            return None
        hbm = measured[0][2] * 0.95
        if len(measured) == 1:
            batch, total, _, fixed = measured[0]  # the state is fixed; the rest grows with the batch
            per_image = max(total - fixed, 1) / batch
            return int((hbm - fixed) / per_image)
        (b0, m0, _, _), (b1, m1, _, _) = measured[0], measured[-1]
        slope = (m1 - m0) / max(b1 - b0, 1)
        if slope <= 0:
            return None
        return int(b0 + (hbm - m0) / slope)

    # --- validate / eval / tile ---------------------------------------------------------

    def upscale_program(self, program: str, name: str, side: int, dtype: str, devices: list) -> dict:
        import jax
        import jax.numpy as jnp

        from drn_jax import flops, inference, model_factory

        config = load_config(name)
        batch = len(devices)
        base = {"program": program, "config": name, "lr_side": side, "dtype": dtype, "batch": batch,
                "features": config.model.features, "modules_per_block": config.model.modules_per_block}

        def lower():
            # The validator runs the training model; eval.py and drn-upscale load one for inference.
            model = model_factory.create_model(config, platform=self.platform, training=program == "validate",
                                               dtype=jnp.dtype(dtype))
            base["conv"] = model.conv
            runner = inference.ModelRunner(model, devices)
            variables = {"params": model_factory.abstract_params(model)}
            return runner.lower(variables, (batch, side, side, 3))

        analytic = flops.expected_flops(config.scale, side, 1, config.model.features, config.model.modules_per_block,
                                        upscale_only=True)
        return self.compile(lower, base, 1, analytic)

    def run(self) -> None:
        from drn_jax import upscale

        if upscale.DEFAULT_TILE != UPSCALE_TILE:
            print(f"note: drn-upscale's default tile is {upscale.DEFAULT_TILE}, not {UPSCALE_TILE}", file=sys.stderr)
        programs = _PROGRAMS.value
        for name in _CONFIGS.value:
            config = load_config(name)
            if "train" in programs:
                for remat in (value.lower() == "true" for value in _REMAT.value):
                    known = None
                    for batch in _BATCHES.value:
                        if batch == "max":
                            if self.topology.name in _TRAIN_TOPOLOGIES.value:
                                self.largest_batch(name, remat, known)
                            continue
                        record = self.train(name, int(batch), remat)
                        self.emit(record)
                        known = record
            buckets = [int(b) for b in _BUCKETS.value] or list(EVAL_BUCKETS[config.scale])
            # Single-chip programs: one compilation per chip type is enough (the first listed topology of it).
            first_of_chip = next(t for t in _TOPOLOGIES.value if TOPOLOGIES[t].chip == self.topology.chip)
            for program in ("validate", "eval"):
                if program in programs and self.topology.name == first_of_chip:
                    dtype = config.model.dtype if program == "validate" else "float32"
                    for side in buckets:
                        self.emit(self.upscale_program(program, name, side, dtype, self.devices[:1]))
            if "tile" in programs:
                local = [d for d in self.devices if d.process_index == 0]
                self.emit(self.upscale_program("tile", name, _TILE.value, "bfloat16", local))


def hlo_file_name(record: dict) -> str:
    tag = "_".join(str(record[k]) for k in ("program", "config", "global_batch", "remat", "lr_side", "dtype")
                   if record.get(k) is not None)
    return f"{record['topology']}_{tag}.hlo.txt"


def reanalyse(path: str, folder: str) -> int:
    """Recomputes the HLO-derived fields of the records in `path` from the HLO texts saved in
    `folder` (``--hlo_dir``), after a change to the analysis; nothing is compiled again."""
    lines, updated = [], 0
    for line in open(path):
        if not line.strip():
            continue
        record = json.loads(line)
        hlo = pathlib.Path(folder) / hlo_file_name(record) if "topology" in record else None
        if record.get("compiled") and hlo is not None and hlo.exists():
            record.update(analyse_text(hlo.read_text()))
            images = record.get("per_chip_batch") or 1
            roofline(record, device_chip(record["chip"], record.get("devices_per_chip", 1)), images)
            updated += 1
        lines.append(json.dumps(record))
    pathlib.Path(path).write_text("\n".join(lines) + "\n")
    print(f"{updated} records of {path} reanalysed from {folder}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def latest_records(path: str) -> list[dict]:
    """The records of a JSON-lines file, the latest of each cell (reruns append)."""
    cells: dict[tuple, dict] = {}
    for line in open(path):
        if not line.strip():
            continue
        r = json.loads(line)
        key = (r["topology"], r["program"], r.get("config"), r.get("global_batch"), r.get("remat"),
               r.get("lr_side"), r.get("dtype"), r.get("hr"), r.get("features"), r.get("modules_per_block"),
               r.get("search"), r.get("conv"))
        cells[key] = r
    return list(cells.values())


def floor_bytes_per_image(r: dict) -> int:
    """A training record's layer-by-layer floor of feature-map bytes per image
    (`drn_jax.flops.expected_activation_bytes`, at the record's dtype)."""
    from drn_jax import flops

    config = load_config(r["config"])
    width = 2 if r.get("dtype") in ("bfloat16", "float16") else 4
    layers = flops.conv_layers(config.scale, r["hr"] // config.scale, r["features"], r["modules_per_block"],
                               config.model.dual, config.model.progressive)
    return flops.expected_activation_bytes(layers, training=True, remat=r["remat"], bytes_per_value=width)


def floor_table(train: list[dict]) -> list[str]:
    """Bytes per image of each compiled step against the layer-by-layer floor."""
    lines = ["Bytes per image against the floor of reading and writing each feature map once per "
             "convolution (`drn_jax.flops.expected_activation_bytes`)", "",
             "| config | slice | images per chip | remat | conv | MB per image: `cost_analysis` / HBM (HLO) "
             "| floor, MB | HBM over floor |", "|---|---|---|---|---|---|---|---|"]
    for r in train:
        if r.get("compiled") and r.get("hbm_bytes_per_image"):
            floor = r.get("floor_bytes_per_image") or floor_bytes_per_image(r)
            lines.append(f"| {r['config']} | {r['topology']} | {r['per_chip_batch']} | {str(r['remat']).lower()} "
                         f"| {r.get('conv') or '-'} | {r['bytes_per_image'] / 1e6:.0f} / {r['hbm_bytes_per_image'] / 1e6:.0f} "
                         f"| {floor / 1e6:.0f} | {r['hbm_bytes_per_image'] / floor:.2f}× |")
    return lines


def table(path: str) -> str:
    rows = latest_records(path)
    lines = ["Training steps, per chip (compiled ahead of time, not run: the compiler's estimates). "
             "Bytes: `cost_analysis()` (every memory space) / the HLO's arrays outside on-chip memory (HBM)", "",
             "| config | slice | batch (per chip) | remat | memory args / temp / out / **total**, GiB (HBM) "
             "| GFLOP: compiler / analytic (ratio) | GB per step | bound | roofline ms | img/s per chip "
             "| of bf16 peak | gradient all-reduce | Winograd ops |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    train = [r for r in rows if r["program"] == "train"]
    train.sort(key=lambda r: (r["config"], r["remat"], r["chip"] != "v5e", r["chips"], r["per_chip_batch"]))
    lines += [_train_row(r) for r in train]
    limits = [r for r in rows if r["program"] == "train_max"]
    if limits:
        lines += ["", "Largest per-chip batch compiled that fits, from every compile of the step in the file "
                  f"(the search steps by {BATCH_STEP} and stops after {MEMORY_SEARCH_COMPILES} compiles, so the "
                  "true limit lies between the two columns)", "",
                  "| config | slice | remat | largest that fits | smallest that does not |", "|---|---|---|---|---|"]
        for r in limits:
            same = [t for t in train if (t["config"], t["topology"], t["remat"]) == (r["config"], r["topology"], r["remat"])]
            fits = [t["per_chip_batch"] for t in same if t.get("compiled") and t.get("fits", True)]
            fails = [t["per_chip_batch"] for t in same if not (t.get("compiled") and t.get("fits", True))]
            lines.append(f"| {r['config']} | {r['topology']} | {str(r['remat']).lower()} | {max(fits, default='-')} "
                         f"| {min(fails) if fails else 'none compiled'} |")
    lines += ["", *floor_table(train)]
    if _BREAKDOWN.value:
        for r in train:
            if r.get("compiled") and r.get("bytes_by_layer"):
                lines += ["", *breakdown(r)]
    rates = dict(item.split(":") for item in _CROP_RATES.value)
    fed = [r for r in train if r.get("compiled") and r.get("roofline_s") and r["hr"] == _CROP_HR.value]
    if rates and fed:
        lines += ["", f"Host cores per chip for tfds: JPEG crops at HR {_CROP_HR.value} "
                  f"(crops per CPU second: {', '.join(f'K {k} {v}' for k, v in rates.items())})", "",
                  "| config | slice | remat | images per chip | predicted img/s per chip: cost / HBM roofline "
                  + "".join(f"| cores, K {k} " for k in rates) + "|",
                  "|---|---|---|---|---|" + "---|" * len(rates)]
        for r in fed:
            per = r.get("devices_per_chip", 1)
            cost, hbm = r["images_per_s_per_chip"] * per, r.get("images_per_s_per_chip_hbm", 0) * per or None
            cells = [f"{cost / float(v):.2f} / {hbm / float(v):.2f}" if hbm else f"{cost / float(v):.2f}"
                     for v in rates.values()]
            lines.append(f"| {r['config']} | {r['topology']} | {str(r['remat']).lower()} | {r['per_chip_batch'] * per} "
                         f"| {_pair(cost, hbm, '.0f')} | "
                         + " | ".join(cells) + " |")
    lines += ["", "Inference programs, one call per chip", "",
              "| program | config | chip / slice | LR side × batch | dtype | conv | memory total, GiB (HBM) "
              "| GFLOP: compiler / analytic (ratio) | GB per call | bound | roofline ms | of bf16 peak | Winograd ops |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_infer_row(r) for r in rows if r["program"] in ("validate", "eval", "tile")]
    return "\n".join(lines)


def breakdown(r: dict) -> list[str]:
    """Markdown: a step's bytes by network part and pass (and the loss, the pyramid, the
    optimiser), from the optimised HLO's instructions (operands + outputs, tile-padded)."""
    parts = r["bytes_by_layer"]
    total = sum(p["bytes"] for p in parts.values())
    hbm = sum(p["hbm_bytes"] for p in parts.values())
    cycles = sum(p["estimated_cycles"] for p in parts.values()) or 1
    images = r["per_chip_batch"]
    lines = [f"Where the bytes go: {r['config']} step on {r['topology']}, {images} images per chip"
             f"{', remat' if r['remat'] else ''} (HLO: {total / 1e9:.2f} GB in all memory spaces, "
             f"{hbm / 1e9:.2f} GB in HBM; `cost_analysis` {r['bytes_accessed'] / 1e9:.2f} GB)", "",
             "| part | GB | share | MB per image | of which HBM, GB | share of the compiler's cycle estimates |",
             "|---|---|---|---|---|---|"]
    for name, p in sorted(parts.items(), key=lambda item: -item[1]["bytes"]):
        if p["bytes"] < 0.002 * total:
            continue
        lines.append(f"| {name} | {p['bytes'] / 1e9:.2f} | {100 * p['bytes'] / total:.1f}% "
                     f"| {p['bytes'] / images / 1e6:.0f} | {p['hbm_bytes'] / 1e9:.2f} "
                     f"| {100 * p['estimated_cycles'] / cycles:.1f}% |")
    kinds = r.get("bytes_by_kind", {})
    if kinds:
        lines += ["", "| instructions | GB | share | of which HBM, GB | share of the cycle estimates |", "|---|---|---|---|---|"]
        for name, p in sorted(kinds.items(), key=lambda item: -item[1]["bytes"]):
            if p["bytes"] >= 0.002 * total:
                lines.append(f"| {name} ({p['instructions']}) | {p['bytes'] / 1e9:.2f} | {100 * p['bytes'] / total:.1f}% "
                             f"| {p['hbm_bytes'] / 1e9:.2f} | {100 * p['estimated_cycles'] / cycles:.1f}% |")
    minor = r.get("bytes_by_minor_dimension", {})
    if minor:
        arrays = sum(padded for padded, _ in minor.values())
        lines += ["", "| arrays by the size of their minor (lane) dimension | GB, padded to the tile | GB of values | padding |",
                  "|---|---|---|---|"]
        lines += [f"| {size} | {padded / 1e9:.2f} ({100 * padded / arrays:.0f}%) | {values / 1e9:.2f} | {padded / values:.2f}× |"
                  for size, (padded, values) in minor.items() if padded >= 0.01 * arrays]
    return lines


def _pair(a: float | None, b: float | None, fmt: str) -> str:
    return " / ".join(format(v, fmt) if v is not None else "-" for v in (a, b))


def _compiled_cells(r: dict) -> list[str]:
    m = r.get("memory", {})
    memory = (f"{_gib(m['arguments'])} / {_gib(m['temporaries'])} / {_gib(m['outputs'])} / **{_gib(m['total'])}** "
              f"({m['hbm'] // GIB})" if m else "-")
    ratio = f"{r['flops_ratio']:.2f}" if r.get("flops_ratio") else "-"
    flop = f"{r['flops'] / 1e9:.1f} / {r['analytic_flops'] / 1e9:.1f} ({ratio})"
    moved = _pair(r["bytes_accessed"] / 1e9, r.get("hlo_hbm_bytes", 0) / 1e9, ".2f")
    ms = _pair(1000 * r["roofline_s"] if r.get("roofline_s") else None,
               1000 * r["roofline_hbm_s"] if r.get("roofline_hbm_s") else None, ".2f")
    bound = r.get("bound", "-")
    if r.get("roofline_hbm_s"):
        peak = device_chip(r["chip"], r.get("devices_per_chip", 1)).bf16_flops
        bound += " / " + ("memory" if r["roofline_hbm_s"] > r["flops"] / peak else "compute")
    share = _pair(100 * r["peak_share"] if r.get("peak_share") else None,
                  100 * r["peak_share_hbm"] if r.get("peak_share_hbm") else None, ".1f")
    return [memory, flop, moved, bound, ms, share]


def _train_row(r: dict) -> str:
    per = r.get("devices_per_chip", 1)
    slice_name = r["topology"] + (f" ({r['chips'] * per} cores)" if per > 1 else "")
    head = [r["config"], slice_name, f"{r['global_batch']} ({r['per_chip_batch']}{' per core' if per > 1 else ''})",
            str(r["remat"]).lower()]
    if not r.get("compiled"):
        return "| " + " | ".join(head + [f"not compiled: {r.get('error', '?')[:200]}"] + ["-"] * 8) + " |"
    memory, flop, moved, bound, ms, share = _compiled_cells(r)
    grads = [c for c in r["collectives"] if c["kind"] == "all-reduce" and c["bytes"] > 1024]
    others = [c for c in r["collectives"] if c not in grads]
    collective = "; ".join(f"{c['count']}× {c['bytes'] / 1e6:.2f} MB {'/'.join(c['dtypes'])} ({c['arrays']} arrays)"
                           for c in grads) or "none"
    if others:
        collective += " + " + "; ".join(f"{c['count']}× {c['kind']} {c['bytes']:.0f} B" for c in others)
    # Per device; a chip of several devices (v4's two cores) runs that many.
    rate = _pair(r["images_per_s_per_chip"] * per, r["images_per_s_per_chip_hbm"] * per if r.get("images_per_s_per_chip_hbm") else None, ".0f")
    return "| " + " | ".join(head + [memory, flop, moved, bound, ms, rate, share + "%", collective,
                                     str(r["winograd_ops"])]) + " |"


def _infer_row(r: dict) -> str:
    where = r["chip"] if r["program"] != "tile" else r["topology"]
    head = [r["program"], r["config"], where, f"{r['lr_side']} × {r['batch']}", r["dtype"], r.get("conv") or "-"]
    if not r.get("compiled"):
        return "| " + " | ".join(head + [f"not compiled: {r.get('error', '?')[:200]}"] + ["-"] * 6) + " |"
    memory, flop, moved, bound, ms, share = _compiled_cells(r)
    m = r.get("memory")
    total = f"{_gib(m['total'])} ({m['hbm'] // GIB})" if m else "-"
    return "| " + " | ".join(head + [total, flop, moved, bound, ms, share + "%", str(r["winograd_ops"])]) + " |"


def main(argv: list[str]) -> int:
    if _REANALYSE.value:
        return reanalyse(_OUT.value, _REANALYSE.value)
    if _TABLE.value:
        print(table(_TABLE.value))
        return 0
    if not _WORKER.value:
        return run_all(argv)
    topology = TOPOLOGIES[_WORKER.value]
    try:
        Worker(topology).run()
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
