"""The training objective of two variants, against an objective assembled by hand here.

* ``loss.dual_target = "prediction"``: the dual term of level ``i > 0`` compares ``D_i(Î_i)``
  with ``stop_gradient(Î_{i-1})`` (the network's own previous prediction), not with ``y_{i-1}``.
* dual without progressive (``model.dual = True``, ``model.progressive = False``): one primal
  term against the HR image and one dual term, all dual blocks chained, against the LR input.

The hand objective runs ``model.apply`` itself, builds the LR input and the targets itself
(``lr_pyramid``) and adds the per-level ``gs_loss`` terms explicitly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from drn_jax import config as config_lib
from drn_jax import losses
from drn_jax import training

try:
    from drn_jax.model_factory import create_model
    from drn_jax.train_state import create_optimizer, create_train_state
except ImportError:  # before the restructuring lands
    from drn_jax.training import create_model, create_optimizer, create_train_state

BATCH, PATCH, SCALE = 2, 16, 4

VARIANTS = {
    "prediction": {"loss.dual_target": "prediction"},
    "dual_not_progressive": {"model.dual": True, "model.progressive": False},
}


def variant_config(name: str) -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.scale = SCALE
    config.model.features = 8
    config.model.modules_per_block = 1
    config.data.hr_patch_size = PATCH
    config.batch_size = BATCH
    for key, value in VARIANTS[name].items():
        config_lib.override(config, key, value)
    return config


def random_params(model, seed: int = 0):
    """Random float32 parameters drawn in NumPy (as tests/helpers.py's tiny_model), biases non-zero."""
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, PATCH // SCALE, PATCH // SCALE, 3), jnp.float32))
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if len(leaf.shape) == 4:
            bound = 1.0 / np.sqrt(np.prod(leaf.shape[:3]))
            return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), jnp.float32)
        return jnp.asarray(0.05 * rng.standard_normal(leaf.shape), jnp.float32)

    return jax.tree.map(draw, shapes)["params"]


def hr_batch(seed: int = 1) -> np.ndarray:
    """(2, 16, 16, 3) uint8: colour ramps plus noise, so every gradient mask has structure."""
    rows, cols = np.mgrid[0:PATCH, 0:PATCH]
    base = np.stack([rows * 12, cols * 10 + 30, (rows + cols) * 6], axis=-1)
    noise = np.random.default_rng(seed).integers(0, 60, (BATCH, PATCH, PATCH, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def hand_objective(config, model, params, hr_uint8, *, stop_dual_target: bool = True):
    """(total, terms) by hand: the model run here, the targets built here, explicit sums."""
    lam, weight = config.loss.lam, config.loss.dual_weight
    hr = hr_uint8.astype(jnp.float32) / 255.0
    lr, pyramid = training.lr_pyramid(hr, config.scale)
    out = model.apply({"params": params}, lr)
    gs = lambda pred, target: losses.gs_loss(pred, target, lam=lam)  # noqa: E731
    if config.model.progressive:
        assert config.loss.dual_target == "prediction"
        levels = int(math.log2(config.scale))
        assert len(out.primal) == len(out.dual) == levels
        primal_terms = [gs(out.primal[i], pyramid[i]) for i in range(levels)]
        # Level 0's dual target is the LR input; level i's the previous primal prediction.
        previous = [jax.lax.stop_gradient(p) if stop_dual_target else p for p in out.primal[:-1]]
        dual_targets = [lr, *previous]
    else:
        assert len(out.primal) == len(out.dual) == 1
        assert out.primal[0].shape == hr.shape and out.dual[0].shape == lr.shape
        primal_terms = [gs(out.primal[0], hr)]
        dual_targets = [lr]
    dual_terms = [gs(d, t) for d, t in zip(out.dual, dual_targets)]
    total = sum(primal_terms) + weight * sum(dual_terms)
    terms = {f"primal_{i}": t for i, t in enumerate(primal_terms)}
    terms.update({f"dual_{i}": t for i, t in enumerate(dual_terms)})
    terms["primal"], terms["dual"] = sum(primal_terms), sum(dual_terms)
    # The library's objective function with the hand-built targets must agree as well.
    library_total, library_terms = losses.drn_objective(
        out.primal, [pyramid[i] for i in range(len(out.primal))] if config.model.progressive else [hr],
        out.dual, dual_targets, loss="gs", lam=lam, dual_weight=weight)
    return total, terms, (library_total, library_terms)


@functools.lru_cache(maxsize=None)
def setup(name: str):
    """(config, model, random params, jitted make_loss_fn) of a variant, built once."""
    config = variant_config(name)
    model = create_model(config)
    return config, model, random_params(model), jax.jit(training.make_loss_fn(config, model))


@pytest.fixture(scope="module")
def hr():
    return jnp.asarray(hr_batch())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_loss_equals_hand_assembled_objective(name, hr):
    config, model, params, loss_fn = setup(name)
    assert (model.dual, model.progressive) == (config.model.dual, config.model.progressive)
    total, terms = loss_fn(params, hr)
    hand_total, hand_terms, (library_total, library_terms) = jax.jit(
        lambda p, x: hand_objective(config, model, p, x))(params, hr)

    expected_keys = ({"primal", "dual", "primal_0", "primal_1", "dual_0", "dual_1"} if name == "prediction"
                     else {"primal", "dual", "primal_0", "dual_0"})
    assert set(terms) == expected_keys
    for key in expected_keys:
        np.testing.assert_allclose(terms[key], hand_terms[key], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(library_terms[key], hand_terms[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(total, hand_total, rtol=1e-6)
    np.testing.assert_allclose(library_total, hand_total, rtol=1e-6)
    assert float(terms["dual"]) > 0 and float(terms["primal"]) > 0


def test_prediction_target_is_not_the_pyramid_target(hr):
    """The two dual targets give different level-1 dual terms (else the test above proves little)."""
    config, model, params, loss_fn = setup("prediction")
    prediction = loss_fn(params, hr)[1]
    config = variant_config("prediction")
    config.loss.dual_target = "pyramid"
    pyramid = jax.jit(training.make_loss_fn(config, model))(params, hr)[1]
    np.testing.assert_allclose(prediction["dual_0"], pyramid["dual_0"], rtol=1e-6)  # t_0 = LR in both
    assert abs(float(prediction["dual_1"]) - float(pyramid["dual_1"])) > 1e-2 * float(pyramid["dual_1"])


def test_prediction_gradient_does_not_flow_through_the_dual_target(hr):
    config, model, params, _ = setup("prediction")
    grad = lambda f: jax.jit(jax.grad(lambda p: f(p)[0]))(params)  # noqa: E731
    library = grad(lambda p: training.make_loss_fn(config, model)(p, hr))
    stopped = grad(lambda p: hand_objective(config, model, p, hr, stop_dual_target=True))
    flowing = grad(lambda p: hand_objective(config, model, p, hr, stop_dual_target=False))

    def max_diff(a, b):
        return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(stopped))
    assert max_diff(library, stopped) <= 1e-5 * scale, max_diff(library, stopped)
    # Without stop_gradient the dual term pulls on primal block 0 through its target.
    assert max_diff(flowing, stopped) > 1e-2 * scale, max_diff(flowing, stopped)
    # ... and only there: the later blocks' gradients are the same either way.
    for block in ("primal_blocks_1", "dual_blocks_0", "dual_blocks_1"):
        assert max_diff(flowing[block], stopped[block]) <= 1e-5 * scale, block
    assert max_diff(flowing["primal_blocks_0"], stopped["primal_blocks_0"]) > 1e-2 * scale


@pytest.mark.parametrize("name", list(VARIANTS))
def test_one_train_step_on_one_device(name, hr):
    config, model, params, loss_fn = setup(name)
    optimizer = create_optimizer(config)
    mesh = training.make_mesh(jax.devices()[:1])
    # create_train_state's structure with the NumPy-drawn parameters: model.init with threefry
    # would compile for many seconds on this CPU.
    abstract = jax.eval_shape(lambda: create_train_state(config, model, optimizer, jax.random.key(0)))
    assert jax.tree.structure(abstract.params) == jax.tree.structure(params)
    before = jax.device_get(params)  # host copies: the step donates the state
    state = training.replicate(abstract.replace(step=np.zeros((), np.int32), params=before,
                                                opt_state=optimizer.init(before)), mesh)
    expected_total, expected_terms = loss_fn(before, hr)

    step = training.make_train_step(config, model, optimizer, mesh)
    state, metrics = step(state, training.global_batch(np.asarray(hr), mesh))
    metrics = jax.device_get(metrics)
    after = jax.device_get(state.params)

    assert int(state.step) == 1
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    # The step's metrics are the loss of the state it started from.
    np.testing.assert_allclose(metrics["total"], expected_total, rtol=1e-5)
    for key, value in expected_terms.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5, err_msg=key)
    assert metrics["grad_norm"] > 0
    # Adam's first step moves every parameter with a non-zero gradient by about the learning rate.
    changes = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), after, before)
    unchanged = [jax.tree_util.keystr(path) for path, c in jax.tree_util.tree_leaves_with_path(changes) if c == 0]
    assert not unchanged, f"parameters the step did not change: {unchanged}"
    largest = max(jax.tree.leaves(changes))
    assert 0.5 * config.learning_rate < largest <= 1.01 * config.learning_rate, largest
