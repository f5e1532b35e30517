#!/usr/bin/env python3
"""DRN's residual trunk alone, compiled for one TPU v5e chip ahead of time: what a layout costs.

    python benchmarks/tpu_trunk.py --images=4,16 --modules=2 --variants=xla,packed --checkpoint=false,true
    python benchmarks/tpu_trunk.py --trunk_table=benchmarks/results/tpu_trunk.jsonl

The trunk is ``modules`` residual modules (``x + conv(relu(conv(x)))``, F 64, bfloat16, float32
parameters) on ``(batch, side, side, 64)`` features, forward and backward, the part of the x4
step that moves most of its bytes (docs/performance.md). Variants of the 3×3 convolution:

* ``xla``: ``lax.conv_general_dilated``, what the package runs on TPU;
* ``packed``: two horizontally neighbouring pixels packed into the channel axis, so that the
  64-channel features fill the TPU's 128 lanes (:mod:`drn_jax.ops.packed`, the package's
  ``model.conv="packed"``; checked here on the CPU before compiling).

One JSON line per compile (``--output``): the compiler's FLOPs and bytes (``cost_analysis``), the
optimised HLO's bytes in all memory spaces and in HBM, and its cycle estimates. An experiment,
not a package feature: the package's convolutions are chosen in ``drn_jax.ops.conv``.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import hlo_text  # noqa: E402
import tpu_aot  # noqa: E402

_IMAGES = flags.DEFINE_list("images", ["4", "16"], "images per chip")
_SIDE = flags.DEFINE_integer("side", 96, "feature map side (the x4 step's second level at HR 192)")
_MODULES = flags.DEFINE_integer("modules", 2, "residual modules")
_VARIANTS = flags.DEFINE_list("variants", ["xla", "packed"], "convolutions: xla, packed")
_CHECKPOINT = flags.DEFINE_list("checkpoint", ["false"], "jax.checkpoint each module (remat): false, true")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e-4", "a tpu_aot topology; one chip of it is used")
_TABLE = flags.DEFINE_string("trunk_table", "", "print the Markdown table of this JSON-lines file and exit")
# --output is tpu_aot's flag (imported above), with this benchmark's own file as its default.
flags.FLAGS.set_default("output", str(REPO / "benchmarks" / "results" / "tpu_trunk.jsonl"))

FEATURES = 64


def conv_of(variant: str):
    """The package's 3×3 convolution by this algorithm (``xla`` or ``packed``)."""
    from drn_jax import ops

    return lambda x, kernel, bias: ops.conv3x3(x, kernel, bias, algorithm=variant)


def trunk_step(conv, remat: bool):
    import jax
    import jax.numpy as jnp

    def module(x, w0, b0, w1, b1):
        cast = [a.astype(jnp.bfloat16) for a in (w0, b0, w1, b1)]
        y = jax.nn.relu(conv(x, cast[0], cast[1]))
        return x + conv(y, cast[2], cast[3])

    if remat:
        module = jax.checkpoint(module)

    def loss(params, x):
        for weights in params:
            x = module(x, *weights)
        return jnp.mean(x.astype(jnp.float32) ** 2)

    return jax.jit(jax.value_and_grad(loss))


def check_packed() -> float:
    """Largest difference of the packed convolution and its gradients from XLA's, float32 on CPU."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 6, 8, 16))
    w = jax.random.normal(keys[1], (3, 3, 16, 16)) / 12
    b = jax.random.normal(keys[2], (16,))

    def f(conv):
        return jax.value_and_grad(lambda x, w, b: jnp.sum(jnp.sin(conv(x, w, b))), argnums=(0, 1, 2))(x, w, b)

    (va, ga), (vp, gp) = f(conv_of("xla")), f(conv_of("packed"))
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip((va, *ga), (vp, *gp)))


def worker() -> int:
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies

    difference = check_packed()
    if difference > 1e-4:
        raise RuntimeError(f"the packed convolution differs from XLA's by {difference}")
    topology = tpu_aot.TOPOLOGIES[_TOPOLOGY.value]
    chip = tpu_aot.CHIPS[topology.chip]
    device = topologies.get_topology_desc(topology_name=topology.topology, platform="tpu").devices[0]
    placed = jax.sharding.SingleDeviceSharding(device)
    params = [tuple(jax.ShapeDtypeStruct(shape, jnp.float32, sharding=placed)
                    for shape in ((3, 3, FEATURES, FEATURES), (FEATURES,)) * 2) for _ in range(_MODULES.value)]
    out = pathlib.Path(flags.FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for batch in map(int, _IMAGES.value):
        x = jax.ShapeDtypeStruct((batch, _SIDE.value, _SIDE.value, FEATURES), jnp.bfloat16, sharding=placed)
        for remat in (value.lower() == "true" for value in _CHECKPOINT.value):
            for variant in _VARIANTS.value:
                start = time.perf_counter()
                compiled = trunk_step(conv_of(variant), remat).lower(params, x).compile()
                costs = compiled.cost_analysis()
                costs = costs[0] if isinstance(costs, (list, tuple)) else costs
                module = hlo_text.parse_module(compiled.as_text())
                record = {"topology": topology.name, "chip": chip.name, "variant": variant, "batch": batch,
                          "side": _SIDE.value, "modules": _MODULES.value, "remat": remat,
                          "compile_s": time.perf_counter() - start, "packed_max_difference": difference,
                          "flops": costs["flops"], "bytes_accessed": costs["bytes accessed"],
                          "hlo_bytes": sum(hlo_text.instruction_bytes(module, i) for i in module.entry),
                          "hlo_hbm_bytes": sum(hlo_text.instruction_bytes(module, i, on_chip=False) for i in module.entry),
                          "estimated_cycles": sum(i.estimated_cycles for i in module.entry),
                          "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}
                record["bytes_per_image"] = record["bytes_accessed"] / batch
                with open(out, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)
    return 0


def table(path: str) -> str:
    """Markdown: each variant against XLA's convolution at the same images per chip and remat."""
    records = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            records[(r["batch"], r["remat"], r["variant"])] = r  # the latest of each
    lines = ["| images per chip | remat | convolution | GFLOP | MB per image (cost_analysis) | fewer bytes than xla "
             "| HBM MB per image (HLO) | compiler's cycle estimates, M |", "|---|---|---|---|---|---|---|---|"]
    for (batch, remat, variant), r in sorted(records.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] != "xla")):
        base = records.get((batch, False, "xla"))
        ratio = (f"{base['bytes_per_image'] / r['bytes_per_image']:.2f}×" if base and base is not r else "1 (base)")
        lines.append(f"| {batch} | {str(remat).lower()} | {variant} | {r['flops'] / 1e9:.1f} "
                     f"| {r['bytes_per_image'] / 1e6:.0f} | {ratio} | {r['hlo_hbm_bytes'] / batch / 1e6:.1f} "
                     f"| {r['estimated_cycles'] / 1e6:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if _TABLE.value:
        print(table(_TABLE.value))
        return 0
    if os.environ.get("TPU_ACCELERATOR_TYPE") is None:  # the parent: rerun with libtpu's environment
        import subprocess

        env = tpu_aot.topology_env(tpu_aot.TOPOLOGIES[_TOPOLOGY.value])
        return subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode
    return worker()


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
