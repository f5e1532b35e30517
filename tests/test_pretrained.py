"""Pretrained models: export from a checkpoint, bitwise load, eval.py/drn-upscale --pretrained, the shipped x4."""

import json
import pathlib
import re

import jax
import numpy as np
import pytest
from PIL import Image

from drn_jax import eval_cli, loading, pretrained, training, upscale, zoo
from helpers import data_overrides, run_eval, subprocess_env, tiny_config, write_photos


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> pathlib.Path:
    """Six small photograph-like images (colour ramps plus texture)."""
    return write_photos(tmp_path_factory.mktemp("images"), seed=1)


@pytest.fixture(scope="module")
def tiny_run(image_folder, tmp_path_factory) -> pathlib.Path:
    """A real 2-step training run of the tiny DRN (helpers.tiny_config)."""
    config = tiny_config(num_train_steps=2, checkpoint_every_steps=2, eval_every_steps=2,
                         **{**data_overrides(image_folder), "data.val_limit": 2})
    workdir = tmp_path_factory.mktemp("tiny_run")
    training.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture
def pretrained_dir(tmp_path, monkeypatch) -> pathlib.Path:
    """A temporary pretrained folder, also set in DRN_PRETRAINED_DIR: tests never write into the package."""
    folder = tmp_path / "pretrained"
    monkeypatch.setenv(zoo.DIRECTORY_ENV, str(folder))
    return folder


@pytest.mark.slow  # trains tiny_run
def test_export_then_load_gives_identical_params(tiny_run, pretrained_dir):
    path = pretrained.export(tiny_run, "tiny", card={"notes": "test"})
    assert path == pretrained_dir / "tiny.msgpack" and path.is_file()
    assert pretrained.available() == ["tiny"]
    assert not (zoo.PACKAGE_DIRECTORY / "tiny.msgpack").exists()

    _, _, reference = loading.load_model(workdir=tiny_run)
    config, model, variables = loading.load_model(pretrained="tiny")
    want = jax.tree_util.tree_leaves_with_path(reference["params"])
    got = jax.tree_util.tree_leaves_with_path(variables["params"])
    assert [jax.tree_util.keystr(k) for k, _ in want] == [jax.tree_util.keystr(k) for k, _ in got]
    for (key, a), (_, b) in zip(want, got):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert a.tobytes() == b.tobytes(), key  # bit for bit
    assert (model.scale, model.features, model.modules_per_block) == (4, 8, 1)
    assert config.model.features == 8

    meta = pretrained.load_metadata("tiny")
    assert meta["card"]["steps"] == 2 and meta["card"]["notes"] == "test"
    assert meta["card"]["data"].startswith("folder:") and meta["card"]["machine"]
    assert meta["parameters"] == sum(np.asarray(x).size for x in jax.tree.leaves(variables))


@pytest.mark.slow  # trains tiny_run
def test_checkpoint_step_folder_exports_that_step(tiny_run, pretrained_dir):
    pretrained.export(tiny_run / "checkpoints" / "2", "step2", path=pretrained_dir)
    assert pretrained.load_metadata("step2", pretrained_dir)["card"]["steps"] == 2


@pytest.mark.slow  # trains tiny_run
def test_unknown_name_is_a_one_line_error_naming_the_available(tiny_run, pretrained_dir):
    pretrained.export(tiny_run, "tiny")
    with pytest.raises(FileNotFoundError) as info:
        loading.load_model(pretrained="x5")
    message = str(info.value)
    assert "\n" not in message and "'x5'" in message and "available: tiny" in message
    with pytest.raises(ValueError, match="--name"):
        pretrained.export(tiny_run, "../escape")


@pytest.mark.slow  # trains tiny_run
def test_corrupted_parameters_are_refused(tiny_run, pretrained_dir):
    path = pretrained.export(tiny_run, "tiny")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        loading.load_model(pretrained="tiny")


@pytest.mark.slow  # trains tiny_run
def test_eval_pretrained_equals_eval_workdir(tiny_run, image_folder, pretrained_dir, tmp_path):
    """eval.py --pretrained (default output folder) scores exactly what --workdir scores."""
    source = f"folder:{image_folder}"
    by_workdir = eval_cli.run(eval_cli.EvalOptions(
        workdir=str(tiny_run), datasets=[source], output_dir=str(tmp_path / "workdir_eval"), progress=False),
        print_fn=lambda _: None)
    pretrained.export(tiny_run, "tiny")

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = subprocess_env(TF_CPP_MIN_LOG_LEVEL="3", **{zoo.DIRECTORY_ENV: str(pretrained_dir)})
    result = run_eval("--pretrained=tiny", f"--datasets={source}", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((cwd / "runs" / "pretrained-tiny" / "eval" / "results.json").read_text())
    expected = by_workdir.summary("DRN")[source]
    for metric in ("psnr", "ssim", "gradient_psnr"):
        assert written[source][metric] == pytest.approx(expected[metric], abs=1e-9), metric
    assert written["_meta"]["pretrained"] == "tiny"

    unknown = run_eval("--pretrained=nope", f"--datasets={source}", cwd=cwd, env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].startswith("error: no pretrained model 'nope'")
    assert "Traceback" not in unknown.stderr


def test_eval_options_refuse_pretrained_with_checkpoint_or_bicubic(pretrained_dir):
    with pytest.raises(ValueError, match="not both"):
        eval_cli.run(eval_cli.EvalOptions(pretrained="x", checkpoint="runs/a/checkpoints/1"))
    with pytest.raises(ValueError, match="--method=bicubic"):
        eval_cli.run(eval_cli.EvalOptions(pretrained="x", method="bicubic", scale=4))


@pytest.mark.slow  # trains tiny_run
def test_upscale_pretrained_equals_workdir(tiny_run, image_folder, pretrained_dir, tmp_path, capsys):
    pretrained.export(tiny_run, "tiny")
    image = image_folder / "img0.png"
    assert upscale.main([str(image), "--output_dir", str(tmp_path / "a"), "--workdir", str(tiny_run),
                         "--no_progress"]) == 0
    assert upscale.main([str(image), "--output_dir", str(tmp_path / "b"), "--pretrained", "tiny",
                         "--no_progress"]) == 0
    a = np.asarray(Image.open(tmp_path / "a" / "img0_x4.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "img0_x4.png"))
    assert a.shape == (160, 192, 3) and np.array_equal(a, b)
    assert upscale.main([str(image), "--output_dir", str(tmp_path / "c"), "--pretrained", "nope",
                         "--no_progress"]) == 2
    assert "no pretrained model 'nope'" in capsys.readouterr().err


@pytest.mark.slow  # trains tiny_run
def test_cli_export_writes_model_card(tiny_run, image_folder, pretrained_dir, tmp_path, capsys):
    results = {"Set5": {"psnr": 30.1234, "ssim": 0.85, "gradient_psnr": 25.5, "images": 5},
               "Set14": {"psnr": 27.6543, "ssim": 0.75, "gradient_psnr": 24.25, "images": 14},
               "_meta": {"scale": 4, "label": "DRN", "self_ensemble": False,
                         "bicubic": {"Set5": {"psnr": 28.42, "ssim": 0.8104, "gradient_psnr": 22.0, "images": 5}}}}
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    assert pretrained.main(["export", "--workdir", str(tiny_run), "--name", "tiny",
                            "--card_from", str(results_path)]) == 0
    card = (pretrained_dir / "tiny.md").read_text()
    for text in ("30.12", "0.8500", "25.50", "27.65", "24.25", "28.42 / 0.8104", "| steps | 2 ",
                 "machine", "wall time", "folder:"):
        assert text in card, text
    scores = pretrained.load_metadata("tiny")["card"]["scores"]
    assert scores["Set14"]["psnr"] == 27.6543
    assert pretrained.main(["list"]) == 0
    assert "tiny: x4" in capsys.readouterr().out
    assert pretrained.main(["export", "--workdir", str(tmp_path / "none"), "--name", "x"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["x4", "x8"])
def test_shipped_model_scores_its_model_card(name, benchmark_dir, monkeypatch, tmp_path):
    """A shipped model reproduces the Set5/Set14 scores its model card reports, to 0.01 dB."""
    monkeypatch.delenv(zoo.DIRECTORY_ENV, raising=False)
    assert name in pretrained.available(zoo.PACKAGE_DIRECTORY)
    meta = pretrained.load_metadata(name, zoo.PACKAGE_DIRECTORY)
    card = meta["card"]
    # No path of the training machine in a card: the data is named by what it is.
    assert "/" not in str(card["data"]) and "/work" not in json.dumps(meta) and "/home" not in json.dumps(meta)
    reported = card.get("scores", {})
    assert {"Set5", "Set14"} <= set(reported), f"the {name} model card must report Set5 and Set14"
    assert (zoo.PACKAGE_DIRECTORY / f"{name}.md").is_file()
    assert (zoo.PACKAGE_DIRECTORY / f"{name}.msgpack").stat().st_size < 8 * 2**20
    settings = card.get("evaluation", {})
    results = eval_cli.run(eval_cli.EvalOptions(
        pretrained=name, data_dir=str(benchmark_dir), datasets=["Set5", "Set14"], output_dir=str(tmp_path),
        self_ensemble=bool(settings.get("self_ensemble")), tile=settings.get("tile"),
        tile_overlap=settings.get("tile_overlap"), progress=False), print_fn=lambda _: None)
    scored = results.summary(results.methods[-1])
    for dataset in ("Set5", "Set14"):
        assert scored[dataset]["images"] == reported[dataset]["images"], dataset
        assert abs(scored[dataset]["psnr"] - reported[dataset]["psnr"]) <= 0.01, (dataset, scored[dataset])
        assert abs(scored[dataset]["gradient_psnr"] - reported[dataset]["gradient_psnr"]) <= 0.01, dataset
        assert abs(scored[dataset]["ssim"] - reported[dataset]["ssim"]) <= 1e-4, dataset


# The paper's equation numbers (docs/method.md uses the same, as do the docstrings of drn_jax.losses).
PAPER_EQUATIONS = {"pixel + gradient loss": 3, "gradient mask": 4, "GS loss": 5, "gradient-sensitive loss": 5}


@pytest.mark.parametrize("name", zoo.available())
def test_shipped_cards_number_the_papers_equations_right(name):
    card = zoo.load_metadata(name).get("card", {})
    texts = [str(card.get("notes", "")), (zoo.directory() / f"{name}.md").read_text()]
    pattern = re.compile(r"(" + "|".join(re.escape(term) for term in PAPER_EQUATIONS) + r") of Eq\. (\d+)")
    for text in texts:
        for term, number in pattern.findall(text):
            assert int(number) == PAPER_EQUATIONS[term], f"{name}: {term} of Eq. {number}"
