"""drn_jax.recipes: the pieces the configs are made of."""

import importlib.util
import pathlib

import pytest

from drn_jax import recipes
from drn_jax.config import base_config
from drn_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(name: str, *args):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def test_with_steps_by_hand():
    config = recipes.with_steps(base_config(), "1000", decay_every=5 / 12,
                                per_run={"eval_every_steps": (8, None), "log_every_steps": (16, 50)})
    assert config.num_train_steps == 1000
    assert config.lr_decay_every == 417  # round(416.67)
    assert config.eval_every_steps == 125 and config.log_every_steps == 50  # 62 capped at 50
    assert config.checkpoint_every_steps == base_config().checkpoint_every_steps  # not named: kept
    tiny = recipes.with_steps(base_config(), 3, decay_every=0.1, per_run={"eval_every_steps": (8, None)})
    assert tiny.lr_decay_every == 1 and tiny.eval_every_steps == 1  # never 0
    with pytest.raises(ConfigError, match="at least 1"):
        recipes.with_steps(base_config(), 0, decay_every=0.4)


def test_shared_data_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(recipes.DATA_DIR_ENV, str(tmp_path))
    assert recipes.shared_data_dir() == tmp_path
    config = recipes.t91_bsd200(base_config())
    assert config.data.train == f"folder:{tmp_path / 'train' / 'T91'},{tmp_path / 'train' / 'BSD200'}"
    assert config.data.val == f"folder:{tmp_path / 'benchmark' / 'Set5' / 'HR'}"
    # The configs read it too.
    assert _config("x4_291").data.val == config.data.val
    assert _config("comparison").data.train == config.data.train


def test_the_291_configs_differ_only_where_they_say():
    x4, x8 = _config("x4_291").to_dict(), _config("x8_291").to_dict()
    flat = lambda d, p="": {f"{p}{k}": v for key, value in d.items()  # noqa: E731
                            for k, v in (flat(value, f"{key}.").items() if isinstance(value, dict) else [(key, value)])}
    x4, x8 = flat(x4), flat(x8)
    differing = {key for key in x4 if x4[key] != x8[key]}
    assert differing == {"scale", "data.hr_patch_size", "init_from", "num_train_steps", "lr_decay_every",
                         "checkpoint_every_steps", "log_every_steps", "eval_every_steps"}
    assert (x4["loss.name"], x4["learning_rate"], x4["model.features"]) == ("pixel_gradient", 8e-4, 32)
    # The paper's configs: the same recipe at two scales, the x4 one's schedule rule.
    p4, p8 = flat(_config("x4", "20000").to_dict()), flat(_config("x8", "20000").to_dict())
    assert {key for key in p4 if p4[key] != p8[key]} == {"scale", "data.hr_patch_size"}
    assert (p4["lr_decay_every"], p4["eval_every_steps"], p4["checkpoint_every_steps"], p4["log_every_steps"]) == \
        (8000, 2000, 2000, 100)
