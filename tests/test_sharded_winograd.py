"""The CPU Winograd convolutions inside the data-parallel (shard_map) training step.

With F = 16 channels the residual (16→16) and upsampling (16→64) convolutions run as Winograd
F(4×4, 3×3) on CPU and the RGB outputs (16→3) as a matrix product plus shifted sum, both with
custom VJPs whose replicated parameters meet sharded activations inside ``shard_map``. Two
steps on a mesh of 8 devices must give the parameters and metrics of the same two steps on
one device, and the step's HLO must show that those convolutions are really not XLA's.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import optax
import pytest

from drn_jax import config as config_lib
from drn_jax import models
from drn_jax import training

try:
    from drn_jax.model_factory import create_model
    from drn_jax.train_state import create_train_state
except ImportError:  # before the restructuring lands
    from drn_jax.training import create_model, create_train_state

BATCH, PATCH = 8, 32
# The module attribute that chooses the convolution algorithm (auto | winograd | xla), once the
# restructuring lands; before it, the DRN_JAX_CONV environment variable (auto | direct |
# winograd), read when the step is traced.
HAS_CONV_ATTRIBUTE = "conv" in [f.name for f in dataclasses.fields(models.DRN)]


def winograd_config():
    config = config_lib.base_config()
    config.scale = 4
    config.model.features = 16  # the Winograd threshold: at least 16 input and output channels
    config.model.modules_per_block = 1
    config.data.hr_patch_size = PATCH
    config.batch_size = BATCH
    if "conv" in config.model:
        config.model.conv = "auto"
    return config


@pytest.fixture
def conv_algorithm(monkeypatch):
    """models(kind) -> the DRN with "auto" (Winograd on CPU) or "xla" convolutions."""
    monkeypatch.delenv("DRN_JAX_CONV", raising=False)
    config = winograd_config()
    auto = create_model(config)

    def model(kind: str) -> models.DRN:
        if HAS_CONV_ATTRIBUTE:
            return auto.clone(conv={"auto": "auto", "xla": "xla"}[kind])
        monkeypatch.setenv("DRN_JAX_CONV", {"auto": "auto", "xla": "direct"}[kind])
        return auto

    return config, model


def initial_state(config, model, optimizer):
    """create_train_state's state with random parameters drawn in NumPy (as tests/helpers.py's tiny_model;
    biases non-zero): ``model.init`` with threefry would compile for ~20 s on this CPU."""
    abstract = jax.eval_shape(lambda: create_train_state(config, model, optimizer, jax.random.key(0)))
    rng = np.random.default_rng(0)

    def draw(leaf):
        if leaf.ndim == 4:
            bound = 1.0 / np.sqrt(np.prod(leaf.shape[:3]))
            return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

    params = jax.tree.map(draw, abstract.params)
    assert abstract.ema_params is None
    return jax.device_get(abstract.replace(step=np.zeros((), np.int32), params=params,
                                           opt_state=optimizer.init(params)))


def hr_batches(steps: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[0:PATCH, 0:PATCH]
    base = np.stack([rows * 6, cols * 5 + 40, (rows + cols) * 3], axis=-1)
    return [np.clip(base + rng.integers(0, 70, (BATCH, PATCH, PATCH, 3)), 0, 255).astype(np.uint8)
            for _ in range(steps)]


def conv_kernel_shapes(hlo_text: str) -> list[tuple[int, int]]:
    """(C_in, C_out) of the 3×3 kernel of every ``convolution`` op in StableHLO text: the
    ``3x3xIxO`` tensor among its operands and result (forward, input and kernel gradients)."""
    shapes = []
    for line in hlo_text.splitlines():
        if "convolution(" not in line:
            continue
        signature = line.rsplit(" : ", 1)[-1]
        kernels = re.findall(r"tensor<3x3x(\d+)x(\d+)x", signature)
        assert len(kernels) == 1, f"cannot tell the kernel of: {signature}"
        shapes.append(tuple(map(int, kernels[0])))
    return shapes


def test_eight_devices_equal_one_with_winograd(conv_algorithm):
    assert jax.device_count() == 8, "conftest should emulate 8 CPU devices"
    config, model_for = conv_algorithm
    model = model_for("auto")
    # Plain SGD: the update is linear in the gradient, so a tight tolerance checks the
    # cross-device averaging itself (Adam's first steps are ±lr whatever the gradient's size,
    # which turns reduction-order noise in near-zero gradients into lr-sized differences).
    optimizer = optax.sgd(0.2)
    initial = initial_state(config, model, optimizer)
    batches = hr_batches()
    results = {}
    for name, devices in (("1", jax.devices()[:1]), ("8", jax.devices())):
        mesh = training.make_mesh(devices)
        state = training.replicate(initial, mesh)
        step = training.make_train_step(config, model, optimizer, mesh)
        for hr in batches:
            state, metrics = step(state, training.global_batch(hr, mesh))
        results[name] = jax.device_get((state.params, metrics))
    (params_1, metrics_1), (params_8, metrics_8) = results["1"], results["8"]

    flat_1 = jax.tree_util.tree_leaves_with_path(params_1)
    flat_8 = jax.tree.leaves(params_8)
    flat_0 = jax.tree.leaves(initial.params)
    worst = max(float(np.max(np.abs(a - b))) for (_, a), b in zip(flat_1, flat_8))
    moved = min(float(np.max(np.abs(a - b))) for (_, a), b in zip(flat_1, flat_0))
    print(f"max |params_1 - params_8| = {worst:.3g}; smallest per-leaf change over 2 steps = {moved:.3g}")
    for (path, a), b in zip(flat_1, flat_8):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    # Agreement means something only if the steps moved every parameter well beyond it.
    assert moved > 1e-4, moved
    assert set(metrics_1) == set(metrics_8)
    for key in metrics_1:
        np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert np.isfinite(metrics_8["total"]) and metrics_8["total"] > 0


def test_sharded_step_uses_winograd_for_the_wide_convolutions(conv_algorithm):
    config, model_for = conv_algorithm
    mesh = training.make_mesh()  # the sharded step, 8 devices
    optimizer = optax.sgd(0.2)
    hr = training.global_batch(hr_batches(1)[0], mesh)
    kernels = {}
    for kind in ("xla", "auto"):
        model = model_for(kind)  # before HAS_CONV_ATTRIBUTE: sets DRN_JAX_CONV for the trace
        state = jax.eval_shape(lambda: create_train_state(config, model, optimizer, jax.random.key(0)))
        state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec())), state)
        lowered = training.make_train_step(config, model, optimizer, mesh).lower(state, hr)
        kernels[kind] = conv_kernel_shapes(lowered.as_text())

    params = jax.eval_shape(lambda: create_train_state(config, model_for("auto"), optimizer,
                                                       jax.random.key(0)).params)
    num_convs = sum(1 for leaf in jax.tree.leaves(params) if leaf.ndim == 4)
    assert num_convs == 13  # head, 2×2 residual, 2 upsample, 2 to_rgb, 2×2 dual

    # Positive control: with XLA's convolution every layer shows up (forward, input gradient and
    # kernel gradient), so the parsing below can see the 16→16, 16→64 and 16→3 convolutions.
    assert set(kernels["xla"]) == {(3, 16), (16, 16), (16, 64), (16, 3)}, sorted(set(kernels["xla"]))
    assert len(kernels["xla"]) >= 2 * num_convs
    # Winograd / shifted sum: only the convolutions from RGB (the head and the stride-2 dual
    # convolutions) remain XLA convolutions.
    assert set(kernels["auto"]) == {(3, 16)}, (
        f"XLA convolutions left in the step with conv=auto: {sorted(set(kernels['auto']))}")
    assert len(kernels["auto"]) < num_convs < len(kernels["xla"])
