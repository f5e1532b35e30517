"""Training on a folder, resuming and evaluating on a JAX install without TensorFlow.

GPU and TPU machines often carry JAX, Flax, optax, orbax, Pillow and tensorboard but no
TensorFlow or TFDS. The subprocesses here run with an import hook that makes ``import
tensorflow`` (and ``tensorflow_datasets``) fail, as on such a machine.
"""

import json
import os

import numpy as np
import pytest

from helpers import REPO, data_overrides, run_python, subprocess_env, tiny_flags

# As if they were not installed: `import` fails and `importlib.util.find_spec` (which orbax and
# etils use to probe for TensorFlow) says there is no such module.
BLOCKER = '''
import sys
sys.modules["tensorflow"] = None
sys.modules["tensorflow_datasets"] = None
'''


@pytest.fixture(scope="module")
def no_tf_env(tmp_path_factory) -> dict:
    hooks = tmp_path_factory.mktemp("no_tf")
    (hooks / "sitecustomize.py").write_text(BLOCKER)
    return subprocess_env(devices=2, PYTHONPATH=f"{hooks}{os.pathsep}{REPO}")


def test_the_blocker_blocks(no_tf_env, tmp_path):
    result = run_python("-c", "import tensorflow", env=no_tf_env, cwd=tmp_path)
    assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr


@pytest.mark.slow
def test_train_resume_and_eval_without_tensorflow(no_tf_env, random_images, tmp_path):
    images = tmp_path / "images"
    random_images(images, (4, (40, 48, 3)), seed=0)
    workdir = tmp_path / "run"
    common = [REPO / "train.py", f"--workdir={workdir}"]
    tiny = {"checkpoint_every_steps": 2, "eval_every_steps": 2, "data.val_limit": 2, **data_overrides(images)}

    first = run_python(*common, *tiny_flags(**tiny, num_train_steps=2), env=no_tf_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_python(*common, *tiny_flags(**tiny, num_train_steps=4), env=no_tf_env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 2 (data position 16)" in resumed.stdout
    assert json.loads((workdir / "summary.json").read_text())["step"] == 4
    assert any((workdir / "tensorboard").iterdir())  # events written without TensorFlow

    evaluated = run_python(REPO / "eval.py", f"--workdir={workdir}", f"--datasets=folder:{images}",
                           env=no_tf_env, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads((workdir / "eval" / "results.json").read_text())
    assert results[f"folder:{images}"]["images"] == 4
    assert 5.0 < results[f"folder:{images}"]["psnr"] < 60.0


def test_accelerator_configs_are_the_paper_network_in_bfloat16():
    """configs/x8.py is configs/x4.py's recipe at x8 (the x4 one is trained below)."""
    import importlib.util

    configs = {}
    for scale in (4, 8):
        spec = importlib.util.spec_from_file_location(f"cfg_x{scale}", REPO / "configs" / f"x{scale}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        configs[scale] = module.get_config("20000")
    for scale, patch in ((4, 192), (8, 384)):
        config = configs[scale]
        assert (config.scale, config.model.features, config.model.modules_per_block) == (scale, 64, 7)
        assert (config.model.dtype, config.data.hr_patch_size, config.loss.name) == ("bfloat16", patch, "gs")
        assert (config.num_train_steps, config.lr_decay_every, config.learning_rate) == (20000, 8000, 1e-4)
    assert configs[4].to_dict() | {"scale": 8, "data": None} == configs[8].to_dict() | {"scale": 8, "data": None}


@pytest.mark.slow
@pytest.mark.parametrize("config_file", ["configs/x4.py"])
def test_accelerator_recipe_trains_the_paper_network_without_tensorflow(config_file, no_tf_env, random_images,
                                                                        tmp_path):
    """The README's one-command accelerator recipe, at a small size on the CPU: the paper's network
    (F 64, R 7) in bfloat16, on a folder, with TensorFlow unimportable."""
    images = tmp_path / "images"
    random_images(images, (2, (64, 64, 3)), seed=1)
    workdir = tmp_path / "run"
    result = run_python(REPO / "train.py", f"--config={REPO / config_file}:2", f"--workdir={workdir}",
                        f"--config.data.train=folder:{images}", f"--config.data.val=folder:{images}",
                        "--config.data.val_limit=1", "--config.data.hr_patch_size=32", "--config.batch_size=2",
                        env=no_tf_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    scale = 4 if "x4" in config_file else 8
    assert (config["scale"], config["model"]["features"], config["model"]["modules_per_block"]) == (scale, 64, 7)
    assert config["model"]["dtype"] == "bfloat16" and config["loss"]["name"] == "gs"
    # `:2` sets the step count, and the schedule follows it: decays at 40% and 80%.
    assert (config["num_train_steps"], config["lr_decay_every"], config["learning_rate"]) == (2, 1, 1e-4)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 2 and np.isfinite(summary["val_psnr"])
