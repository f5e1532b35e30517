import json

import pytest

from drn_jax import config as config_lib
from drn_jax.rundir import RunDir


def test_saved_config_from_before_a_new_field_gets_its_default(tmp_path):
    """A workdir written before `model.remat` existed still loads, with the saved values kept."""
    saved = config_lib.base_config().to_dict()
    del saved["model"]["remat"]
    saved["model"]["features"] = 32
    saved["learning_rate"] = 4e-4
    RunDir(tmp_path).config_file.write_text(json.dumps(saved))

    config = RunDir(tmp_path).load_config()

    assert config.model.remat is False
    assert config.model.features == 32
    assert config.model.modules_per_block == config_lib.base_config().model.modules_per_block
    assert config.learning_rate == pytest.approx(4e-4)


def test_saved_fields_unknown_today_are_kept():
    config = config_lib.from_saved({"model": {"features": 16}, "note": "from a fork"})
    assert config.model.features == 16 and config.note == "from a fork"
