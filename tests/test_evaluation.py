"""Benchmark evaluation: published bicubic rows, a model end to end, files, compile counts."""

import csv
import json
import pathlib
import subprocess

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from drn_jax import eval_cli, evaluation, inference, loading, models, plots, training
from helpers import data_overrides, run_eval, subprocess_env, tiny_config, tiny_model


def run_eval_py(*flags: str) -> subprocess.CompletedProcess:
    return run_eval(*flags, env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="3"))


def assert_row(entry: dict, psnr: float, ssim: float, images: int):
    assert entry["images"] == images
    assert abs(entry["psnr"] - psnr) <= 0.01, entry
    assert abs(entry["ssim"] - ssim) <= 0.001, entry


@pytest.mark.parametrize("scale,rows", [
    (4, {"Set5": (28.42, 0.8104, 5)}),
    (8, {"Set5": (24.39, 0.657, 5)}),
])
@pytest.mark.slow
def test_eval_py_bicubic_reproduces_published_rows(benchmark_dir, tmp_path, scale, rows):
    result = run_eval_py("--method=bicubic", f"--scale={scale}", f"--data_dir={benchmark_dir}",
                         f"--datasets={','.join(rows)}", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Bicubic" in result.stdout and "Traceback" not in result.stderr
    written = json.loads((tmp_path / "results.json").read_text())
    for dataset, (psnr, ssim, images) in rows.items():
        assert_row(written[dataset], psnr, ssim, images)
        assert set(written[dataset]) == {"psnr", "ssim", "gradient_psnr", "images"}
    assert written["_meta"]["scale"] == scale
    assert "| Bicubic | x%d |" % scale in (tmp_path / "results.md").read_text()
    with open(tmp_path / "per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == sum(images for _, _, images in rows.values())


def test_set14_bicubic_row_and_model_compilations(benchmark_dir, tmp_path):
    """One pass over Set14 x4: the published bicubic row and at most 3 network compilations."""
    model, variables = tiny_model()
    drn = inference.make_upscaler(model, variables=variables)
    methods = {"Bicubic": inference.BicubicUpscaler(4), "DRN": drn}
    results = evaluation.evaluate(methods, [evaluation.open_dataset("Set14", benchmark_dir)], 4,
                                  progress=False)
    # bridge.png is greyscale and scored on its grey values, as the community's scripts do.
    assert_row(results.summary("Bicubic")["Set14"], 26.00, 0.7027, 14)
    assert drn.compilations <= 3, drn.shapes
    assert results.summary("DRN")["Set14"]["images"] == 14


def write_dataset(root: pathlib.Path, name: str) -> list[str]:
    """A benchmark-style folder of four random images, one greyscale, two of the same size."""
    rng = np.random.default_rng(0)
    names = []
    # Few distinct sizes: each costs compilations of the bicubic resize and of the metrics.
    for index, (height, width) in enumerate([(70, 90), (70, 90), (128, 101), (97, 128)]):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if index == 0 else pixels)
        names.append(f"img_{index:02d}.png")
        (root / name / "HR").mkdir(parents=True, exist_ok=True)
        image.save(root / name / "HR" / names[-1])
    return names


def test_model_evaluates_end_to_end(tmp_path, monkeypatch):
    names = write_dataset(tmp_path / "data", "Tiny")
    model, variables = tiny_model()
    config = ml_collections.ConfigDict({"scale": 4, "data": {"val": "samples:val"}})
    calls = []

    def load_model(source, **overrides):  # a loading.ModelSource, as eval_cli passes it
        calls.append((pathlib.Path(source.location) if source.kind == "workdir" else None,
                      source.location if source.kind == "checkpoint" else None))
        return config, model, variables

    monkeypatch.setattr(loading, "load_model", load_model)
    lines = []
    results = eval_cli.run(eval_cli.EvalOptions(
        workdir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), save_images=True,
        save_comparison=True, progress=False), print_fn=lines.append)

    assert calls == [(tmp_path / "run", None)]
    assert results.methods == ["Bicubic", "DRN"]
    out = tmp_path / "run" / "eval"  # the default output_dir
    written = json.loads((out / "results.json").read_text())
    assert set(written) == {"Tiny", "_meta"}
    assert set(written["Tiny"]) == {"psnr", "ssim", "gradient_psnr", "images"}
    assert written["Tiny"]["images"] == 4 and np.isfinite(written["Tiny"]["psnr"])
    meta = written["_meta"]
    assert meta["parameters"] == models.count_params(variables["params"])
    assert meta["compilations"] == 2  # LR sides 17..32: buckets 24 and 32
    assert meta["bicubic"]["Tiny"]["images"] == 4
    # SR images are named like the HR files and are 4x the LR (mod-cropped HR) size.
    assert sorted(p.name for p in (out / "images" / "Tiny").iterdir()) == names
    hr = np.asarray(Image.open(tmp_path / "data" / "Tiny" / "HR" / names[3]))
    sr = np.asarray(Image.open(out / "images" / "Tiny" / names[3]))
    assert sr.shape == (hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4, 3)
    assert sorted(p.name for p in (out / "comparisons" / "Tiny").iterdir()) == names
    table = "\n".join(lines)
    assert "Bicubic" in table and "DRN" in table and "compilation" in table
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["method"] for r in rows} == {"Bicubic", "DRN"}

    # The plot of PSNR against parameters reads these results.
    figure = plots.plot_psnr_vs_params([out / "results.json"], tmp_path / "fig.png")
    assert Image.open(figure).size[0] > 100


@pytest.mark.slow
def test_eval_py_without_checkpoint_says_so(tmp_path):
    result = run_eval_py(f"--workdir={tmp_path / 'nothing'}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"no checkpoint in {tmp_path / 'nothing'}" in result.stderr
    assert "python train.py" in result.stderr


def test_bicubic_without_scale_or_run_is_a_usage_error(tmp_path):
    with pytest.raises(ValueError, match="--scale is required"):
        eval_cli.run(eval_cli.EvalOptions(method="bicubic", workdir=str(tmp_path)))


def test_missing_dataset_names_what_is_there(benchmark_dir):
    with pytest.raises(FileNotFoundError, match="datasets present: Set5, Set14"):
        evaluation.open_dataset("Urban101", benchmark_dir)


def test_validator_for_training():
    model, variables = tiny_model()
    config = ml_collections.ConfigDict({"scale": 4})
    rng = np.random.default_rng(1)
    images = [(f"v{i}", rng.integers(0, 256, (60, 72, 3), dtype=np.uint8)) for i in range(2)]
    validate = evaluation.make_validator(config, model, images)
    scores, strip = validate(variables["params"])
    assert set(scores) == {"psnr", "ssim", "gradient_psnr", "psnr_bicubic"}
    assert all(np.isfinite(v) for v in scores.values())
    assert strip.dtype == np.uint8 and strip.ndim == 3 and strip.shape[-1] == 3
    # Different parameters, same compiled network: the scores change.
    shifted = jax.tree.map(lambda p: p * 0.5, variables["params"])
    assert validate(shifted)[0]["psnr"] != scores["psnr"]


@pytest.mark.slow
def test_checkpoint_from_tiny_training_run_evaluates_through_eval_py(tmp_path):
    """train.py's checkpoint -> eval.py with no data flags scores the run's held-out images.

    The training loop's last validation and eval.py use the same protocol on the same
    images with the same parameters, so their DRN PSNRs agree.
    """
    folder = tmp_path / "photos"
    write_dataset(tmp_path / "data", "Tiny")
    (tmp_path / "data" / "Tiny" / "HR").rename(folder)
    # Validated on every image, as eval.py scores them.
    config = tiny_config(num_train_steps=2, checkpoint_every_steps=2, eval_every_steps=2,
                         **{**data_overrides(folder), "data.hr_patch_size": 16, "data.val_limit": 0})
    workdir = tmp_path / "run"
    summary = training.train_and_evaluate(config, workdir)

    result = run_eval_py(f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((workdir / "eval" / "results.json").read_text())
    dataset, = [name for name in written if name != "_meta"]
    assert written[dataset]["images"] == 4
    np.testing.assert_allclose(written[dataset]["psnr"], summary["val_psnr"], atol=1e-4)
    np.testing.assert_allclose(written["_meta"]["bicubic"][dataset]["psnr"], summary["val_psnr_bicubic"], atol=1e-4)
    assert written["_meta"]["parameters"] == summary["parameters"]
    for name in ("results.md", "per_image.csv"):
        assert (workdir / "eval" / name).is_file()
    assert "DRN" in result.stdout and "Bicubic" in result.stdout
