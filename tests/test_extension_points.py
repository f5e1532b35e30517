"""The extension points of docs/extending.md: a new loss and a new metric are one function and
one registry line each, and everything downstream picks them up. (The data-source plug-in is
tested in test_data_sources.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drn_jax import config as config_lib
from drn_jax import evaluation, losses, metrics, model_factory, training


def charbonnier_loss(pred, target, eps=1e-3):
    error = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.sqrt(error * error + eps * eps))


@functools.partial(jax.jit, static_argnames=("max_value", "shave"))
def mae(a, b, max_value=1.0, shave=0):
    a, b = metrics.shave(a.astype(jnp.float32), shave), metrics.shave(b.astype(jnp.float32), shave)
    return jnp.mean(jnp.abs(a - b), axis=(-3, -2, -1))


@pytest.fixture
def charbonnier(monkeypatch):
    monkeypatch.setitem(losses.LOSSES, "charbonnier", losses.LossSpec(charbonnier_loss, {"eps": 1e-3}))


@pytest.fixture
def mae_metric(monkeypatch):
    monkeypatch.setitem(metrics.METRICS, "mae", metrics.MetricSpec(mae, "MAE", 2, "MAE"))


def test_a_registered_loss_gets_a_config_field_and_trains(charbonnier):
    config = config_lib.base_config()
    assert config.loss.eps == 1e-3 and config.loss.lam == 2.0  # declared hyper-parameters, defaults
    config_lib.override(config, "loss.name", "charbonnier")
    config_lib.override(config, "loss.eps", 0.5)
    config_lib.override(config, "model.features", 4)
    config_lib.override(config, "model.modules_per_block", 1)
    config_lib.validate(config, num_devices=1)
    assert training.loss_hyperparameters(config) == {"eps": 0.5}

    model = model_factory.create_model(config)
    hr = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
    total, terms = training.make_loss_fn(config, model)(params, hr)

    # By hand: the objective of Eq. 7 with the new per-level loss, eps = 0.5.
    x = hr.astype(np.float32) / 255.0
    lr, pyramid = training.lr_pyramid(jnp.asarray(x), 4)
    out = model.apply({"params": params}, lr)
    primal = sum(charbonnier_loss(o, t, 0.5) for o, t in zip(out.primal, pyramid))
    dual = sum(charbonnier_loss(o, t, 0.5) for o, t in zip(out.dual, (lr, pyramid[0])))
    np.testing.assert_allclose(float(total), float(primal + 0.1 * dual), rtol=1e-6)
    np.testing.assert_allclose(float(terms["primal"]), float(primal), rtol=1e-6)


def test_get_loss_binds_only_declared_hyperparameters(charbonnier):
    pred, target = jnp.full((1, 2, 2, 1), 0.5), jnp.zeros((1, 2, 2, 1))
    # sqrt(0.25 + 0.01) = 0.5099...; lam is not charbonnier's and is ignored.
    assert float(losses.get_loss("charbonnier", eps=0.1, lam=7.0)(pred, target)) == pytest.approx(0.26 ** 0.5)
    assert float(losses.get_loss("l1", lam=7.0)(pred, target)) == pytest.approx(0.5)


def test_a_registered_metric_reaches_scores_tables_and_csv(mae_metric, tmp_path):
    hr = np.full((20, 20, 3), 100, np.uint8)
    sr = hr.copy()
    sr[4:12, 4:12] = 110
    # Rounded MATLAB luma of grey g: round(16 + 219 g / 255): 110 for g = 110, 102 for g = 100.
    diff = round(16 + 219 * 110 / 255) - round(16 + 219 * 100 / 255)
    assert diff == 8
    scores = metrics.score_y(sr, hr, 2)
    assert set(scores) == {"psnr", "ssim", "gradient_psnr", "mae"}
    # 64 of the 16x16 pixels left after shaving 2 differ by 8 levels of Y.
    assert float(scores["mae"]) == pytest.approx(diff * 64 / 256)

    results = evaluation.Results(2, ["DRN"], ["toy"])
    results.images.append(evaluation.ImageScore("toy", "a.png", "DRN", {k: float(v) for k, v in scores.items()}, 0.1))
    table = evaluation.format_table(results)
    assert "MAE" in table and "2.00" in table
    paths = evaluation.write_results(results, tmp_path, "DRN")
    header, row = paths["csv"].read_text().splitlines()
    assert header.split(",")[3:7] == ["psnr", "ssim", "gradient_psnr", "mae"]
    assert float(row.split(",")[6]) == pytest.approx(2.0)
    assert "MAE" in paths["md"].read_text()
