"""Warm start (`drn_jax.warm_start`): a higher-scale DRN grown from a trained lower-scale one."""

import jax
import numpy as np
import pytest

from drn_jax import config as config_lib
from drn_jax import model_factory, models, train_state, warm_start, zoo
from drn_jax.errors import ConfigError
from helpers import tiny_model


def _x8_target(features: int = 8) -> tuple[models.DRN, dict]:
    model = models.DRN(8, features=features, modules_per_block=1)
    return model, model_factory.abstract_params(model)


def test_x8_from_x4_reproduces_the_x4_levels_and_copies_its_last_block():
    x4, x4_variables = tiny_model(4)
    x4_params = x4_variables["params"]
    x8, target = _x8_target()
    grown = warm_start.grow_params(x4_params, target)

    assert jax.tree_util.tree_structure(grown) == jax.tree_util.tree_structure(target)
    # The new third block starts as the x4's last block, primal and dual.
    for kind in ("primal_blocks", "dual_blocks"):
        chex_equal = jax.tree.map(np.array_equal, grown[f"{kind}_2"], x4_params[f"{kind}_1"])
        assert all(jax.tree.leaves(chex_equal)), kind

    # Blocks 0 and 1 are the x4's own: on the same LR input the x8 model's first two levels
    # (primal images and dual reconstructions) are the x4 model's outputs, bit for bit.
    lr = np.random.default_rng(0).uniform(size=(2, 6, 5, 3)).astype(np.float32)
    want = x4.apply({"params": x4_params}, lr)
    got = x8.apply({"params": grown}, lr)
    assert len(got.primal) == 3 and len(want.primal) == 2
    for level in range(2):
        np.testing.assert_array_equal(np.asarray(got.primal[level]), np.asarray(want.primal[level]))
        np.testing.assert_array_equal(np.asarray(got.dual[level]), np.asarray(want.dual[level]))


def test_same_scale_is_a_copy():
    params = tiny_model(4)[1]["params"]
    model = models.DRN(4, features=8, modules_per_block=1)
    grown = warm_start.grow_params(params, model_factory.abstract_params(model))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, grown, params)))


@pytest.mark.parametrize("target_kwargs, message", [
    (dict(scale=8, features=16, modules_per_block=1), "shape"),       # another width
    (dict(scale=8, features=8, modules_per_block=2), "residual_1"),   # deeper
])
def test_mismatched_models_are_refused_naming_the_entry(target_kwargs, message):
    params = tiny_model(4)[1]["params"]
    model = models.DRN(**target_kwargs)
    with pytest.raises(ConfigError, match=message):
        warm_start.grow_params(params, model_factory.abstract_params(model))


def test_initial_params_from_a_pretrained_name_and_the_train_state(tmp_path, monkeypatch):
    x4_params = tiny_model(4)[1]["params"]
    config4 = config_lib.base_config()
    config4.model.features, config4.model.modules_per_block = 8, 1
    monkeypatch.setenv(zoo.DIRECTORY_ENV, str(tmp_path))
    zoo.write("tiny4", x4_params, {"config": config4.to_dict()})

    config8 = config_lib.base_config()
    config8.scale, config8.model.features, config8.model.modules_per_block = 8, 8, 1
    config8.data.hr_patch_size = 64
    config8.init_from = "tiny4"
    model8 = model_factory.create_model(config8)
    grown = warm_start.initial_params(config8, model8)
    np.testing.assert_array_equal(np.asarray(grown["primal_blocks_2"]["upsample"]["kernel"]),
                                  x4_params["primal_blocks_1"]["upsample"]["kernel"])

    optimizer = train_state.create_optimizer(config8)
    state = train_state.create_train_state(config8, model8, optimizer, jax.random.key(0), grown)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, state.params, grown)))

    # An x8 source cannot start an x4 run.
    config4.init_from = "tiny8"
    zoo.write("tiny8", grown, {"config": config8.to_dict()})
    with pytest.raises(ConfigError, match="x8 model"):
        warm_start.initial_params(config4, model_factory.create_model(config4))
    # Neither a name nor a workdir.
    config8.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="neither a pretrained model"):
        warm_start.initial_params(config8, model8)


def test_model_card_names_the_warm_start():
    from drn_jax import pretrained

    config = config_lib.base_config()
    config.init_from = "x4"
    meta = {"name": "x8", "parameters": 1, "config": config.to_dict(), "card": {}}
    assert "| initialised from | `x4` (warm start" in pretrained.model_card(meta)
    config.init_from = ""
    assert "initialised from" not in pretrained.model_card({**meta, "config": config.to_dict()})
