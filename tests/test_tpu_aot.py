"""TPU programs compiled ahead of time on this CPU host (libtpu's deviceless compiler).

A tiny DRN's float32 training step and ``DRN.upscale`` (eval.py's network call) are compiled for
a v5e:2x2 slice by benchmarks/tpu_aot.py, the tool that makes docs/performance.md's TPU table,
in a subprocess: libtpu's TPU environment must be set before JAX is imported, and this session
has imported JAX with 8 emulated CPU devices. The test fails if either program no longer lowers
or compiles for TPU, if the step's collectives are not the one gradient all-reduce (plus the
metrics'), or if an op of the CPU-only Winograd kernels (drn_jax/ops/winograd.py) is in a TPU
program: float32 at 16 channels is exactly where ``conv="auto"`` picks them on a CPU.
"""

import collections
import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from drn_jax import flops, inference, model_factory, models, train_state, training
from drn_jax.config import base_config

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import hlo_text  # noqa: E402

FEATURES, MODULES, PATCH, BATCH, SIDE = 16, 1, 32, 8, 16


def tiny_model(**overrides) -> models.DRN:
    config = base_config()
    config.model.update(features=FEATURES, modules_per_block=MODULES)
    return model_factory.create_model(config, **overrides)


@pytest.fixture(scope="module")
def tpu_records(tmp_path_factory):
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed: `pip install -e '.[tpu]'` (CI has it through the test extra)")
    out = tmp_path_factory.mktemp("tpu_aot") / "records.jsonl"
    env = {k: v for k, v in os.environ.items()
           # A TPU executable in the session's CPU compilation cache would be of no use to anyone.
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    command = [sys.executable, str(REPO / "benchmarks" / "tpu_aot.py"), "--topologies=v5e-4",
               "--programs=train,eval", "--configs=x4", f"--batches={BATCH}", "--remat=false",
               f"--features={FEATURES}", f"--modules_per_block={MODULES}", f"--hr_patch_size={PATCH}",
               "--train_dtype=float32", f"--buckets={SIDE}", f"--output={out}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {record["program"]: record for record in records}


def test_training_step_compiles_for_tpu(tpu_records):
    record = tpu_records["train"]
    assert record["compiled"], record.get("error")
    assert (record["topology"], record["chips"], record["device_kind"]) == ("v5e-4", 4, "TPU v5 lite")
    assert (record["global_batch"], record["per_chip_batch"], record["dtype"]) == (BATCH, BATCH // 4, "float32")
    assert 0 < record["memory"]["total"] < record["memory"]["hbm"]
    # The XLA convolutions: forward, and the backward pass's input and kernel gradients.
    layers = flops.conv_layers(4, PATCH // 4, FEATURES, MODULES)
    assert record["convolutions"] >= 2 * len(layers)
    assert record["flops"] >= record["analytic_flops"] == flops.expected_flops(
        4, PATCH // 4, BATCH // 4, FEATURES, MODULES, training=True)


def test_training_step_collectives_are_one_gradient_all_reduce(tpu_records):
    params = model_factory.abstract_params(tiny_model())
    collectives = tpu_records["train"]["collectives"]
    assert {c["kind"] for c in collectives} == {"all-reduce"}
    # One all-reduce of the float32 gradients (each parameter once), into which XLA may combine
    # the loss terms' pmean (a handful of float32 scalars) or keep it apart.
    assert sum(c["count"] for c in collectives) <= 2
    assert {dtype for c in collectives for dtype in c["dtypes"]} == {"f32"}
    gradient_bytes = 4 * models.count_params(params)
    assert gradient_bytes <= sum(c["bytes"] for c in collectives) < gradient_bytes + 64
    assert max(c["arrays"] for c in collectives) >= len(jax.tree.leaves(params))


def test_upscale_compiles_for_tpu(tpu_records):
    record = tpu_records["eval"]
    assert record["compiled"], record.get("error")
    assert (record["lr_side"], record["batch"], record["dtype"]) == (SIDE, 1, "float32")
    assert record["collectives"] == []
    assert record["convolutions"] >= len(flops.conv_layers(4, SIDE, FEATURES, MODULES, upscale_only=True))


@pytest.mark.parametrize("program", ["train", "eval"])
def test_no_cpu_only_kernel_in_tpu_programs(tpu_records, program):
    record = tpu_records[program]
    assert record["conv"] in ("auto", "xla")
    assert record["winograd_ops"] == 0
    assert not record["winograd_file_in_hlo"]


def test_the_winograd_check_sees_winograd_ops():
    # The same check on a CPU program that does use them: ops from drn_jax/ops/winograd.py are
    # found by their source file in the optimised HLO's stack frames.
    model = tiny_model(conv="winograd")
    runner = inference.ModelRunner(model)
    params = model_factory.abstract_params(model)
    text = runner.lower({"params": params}, (1, SIDE, SIDE, 3)).compile().as_text()
    module = hlo_text.parse_module(text)
    assert any(path.endswith("ops/winograd.py") for path in module.files)
    assert sum("ops/winograd.py" in module.source_file(i) for i in module.instructions.values()) > 10
    xla = tiny_model(conv="xla")
    text = inference.ModelRunner(xla).lower({"params": params}, (1, SIDE, SIDE, 3)).compile().as_text()
    assert not any(path.endswith("ops/winograd.py") for path in hlo_text.parse_module(text).files)


def test_gradients_are_summed_in_float32_for_a_bfloat16_model():
    # The step's psum of the gradients sits where the replicated parameters first meet the
    # data; it must run on their float32 cotangents, not on those of their bfloat16 casts (TPU
    # compilers keep a bfloat16 all-reduce; the CPU's upcasts it, so the lowered program is read).
    config = base_config()
    config.model.update(features=8, modules_per_block=1, dtype="bfloat16")
    config.data.hr_patch_size, config.batch_size = 32, 8
    model = model_factory.create_model(config)
    optimizer = train_state.create_optimizer(config)
    mesh = training.make_mesh()
    state = jax.eval_shape(lambda key: train_state.create_train_state(config, model, optimizer, key),
                           jax.random.key(0))
    hr = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.uint8)
    text = training.make_train_step(config, model, optimizer, mesh).lower(state, hr).as_text()
    reduced = collections.Counter(re.sub(r"tensor<(?:[0-9]+x)*", "", t).rstrip(">") for t in
                                  re.findall(r'"stablehlo.all_reduce".*?\}\) : \((tensor<[^>]*>)\)', text, re.S))
    # Every parameter's gradient (and the loss terms) in float32: 33 arrays for this DRN.
    assert reduced == {"f32": len(jax.tree.leaves(model_factory.abstract_params(model))) + 7}


HLO = """HloModule jit_step, is_scheduled=true

FileNames
1 "drn_jax/models.py"
2 "drn_jax/losses.py"

FunctionNames
1 "f"

FileLocations
1 {file_name_id=1 function_name_id=1 line=3 end_line=3 column=1 end_column=1}
2 {file_name_id=2 function_name_id=1 line=5 end_line=5 column=1 end_column=1}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=1}

%fused_negate (param_0: bf16[4,192,192,3]) -> bf16[4,192,192,3] {
  %param_0 = bf16[4,192,192,3]{0,3,2,1:T(4,128)(2,1)} parameter(0)
  ROOT %negate.1 = bf16[4,192,192,3]{0,3,2,1:T(4,128)(2,1)} negate(%param_0), metadata={op_name="a(b)"}
}

ENTRY %main (a: bf16[4,192,192,3], b: bf16[48,32,7,64]) -> (bf16[4,192,192,3], bf16[12,32,7,64]) {
  %a = bf16[4,192,192,3]{0,3,2,1:T(4,128)(2,1)} parameter(0)
  %b = bf16[48,32,7,64]{3,1,2,0:T(8,128)(2,1)} parameter(1)
  %fusion.1 = bf16[4,192,192,3]{0,3,2,1:T(4,128)(2,1)} fusion(%a), kind=kLoop, calls=%fused_negate, metadata={op_name="jit(step)/DRN/neg" stack_frame_id=1}, backend_config={"window_config":{"estimated_cycles":"2169","x":"{)"}}
  %slice-start.2 = ((bf16[48,32,7,64]{3,1,2,0:T(8,128)(2,1)}), bf16[12,32,7,64]{3,1,2,0:T(8,128)(2,1)S(1)}, s32[]{:S(2)}) slice-start(%b), slice={[0:12], [0:32], [0:7], [0:64]}
  %slice-done.2 = bf16[12,32,7,64]{3,1,2,0:T(8,128)(2,1)S(1)} slice-done(%slice-start.2)
  %all-reduce.3 = (f32[]{:T(128)}, bf16[3,3,64,3]{2,3,1,0:T(4,128)(2,1)}) all-reduce(%a, %b), channel_id=1, to_apply=%add, metadata={op_name="psum" stack_frame_id=2}
  ROOT %tuple.4 = (bf16[4,192,192,3]{0,3,2,1:T(4,128)(2,1)}, bf16[12,32,7,64]{3,1,2,0:T(8,128)(2,1)S(1)}) tuple(%fusion.1, %slice-done.2)
}
"""


def test_hlo_text_bytes_by_layout_and_memory_space():
    module = hlo_text.parse_module(HLO)
    assert [i.opcode for i in module.entry] == ["parameter", "parameter", "fusion", "slice-start", "slice-done",
                                                "all-reduce", "tuple"]
    fusion, start, done, reduce = module.entry[2:6]
    assert (fusion.called, fusion.estimated_cycles, fusion.op_name) == ("fused_negate", 2169, "jit(step)/DRN/neg")
    # (4, 192, 192, 3) with dimension 0 minor: the tile (4, 128) pads the batch of 4 to 128 lanes
    # and the 3 channels to 4 rows, 42.7x the logical bytes, read once and written once.
    padded = 128 * 192 * 192 * 4 * 2
    assert hlo_text.instruction_bytes(module, fusion) == 2 * padded
    assert hlo_text.instruction_bytes(module, fusion, padded=False) == 2 * 4 * 192 * 192 * 3 * 2
    # A slice into on-chip memory (S(1)) reads its HBM operand (64 channels padded to 128) and
    # writes the slice; only the read is HBM traffic. Its -done moves nothing more.
    read, written = 48 * 32 * 7 * 128 * 2, 12 * 32 * 7 * 128 * 2
    assert hlo_text.instruction_bytes(module, start) == read + written
    assert hlo_text.instruction_bytes(module, start, on_chip=False) == read
    assert hlo_text.instruction_bytes(module, done) == 0
    assert module.source_file(fusion) == "drn_jax/models.py" and module.source_file(reduce) == "drn_jax/losses.py"
    assert module.origin(done) == "" and module.origin(fusion) == "drn_jax/models.py"
    (collective,) = hlo_text.collectives(module)
    assert collective == {"kind": "all-reduce", "bytes": 4 + 3 * 3 * 64 * 3 * 2, "arrays": 2,
                          "dtypes": ["bf16", "f32"], "op_name": "psum"}
