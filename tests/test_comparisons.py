"""scripts/run_comparisons.py: the run list, the report from run folders, a tiny end-to-end run."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_comparisons.py"


@pytest.fixture(scope="module")
def rc():
    spec = importlib.util.spec_from_file_location("run_comparisons", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def flat(config) -> dict:
    out = {}

    def walk(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(json.loads(json.dumps(config.to_dict())))
    return out


# ---------------------------------------------------------------------------
# The run list
# ---------------------------------------------------------------------------

def test_runs_are_what_the_papers_comparisons_need(rc, tmp_path):
    runs = rc.all_runs()
    names = [run.name for run in runs]
    assert len(names) == len(set(names)) == 14
    # One shared baseline: GS, λ 2, dual weight 0.1, dual + progressive; two seeds, trained once.
    assert names.count("base-s0") == 1 and names.count("base-s1") == 1
    for comparison in rc.COMPARISONS:
        assert "base" in [row.variant for row in comparison.rows], comparison.name
        for claim in comparison.claims:
            assert {claim.a, claim.b} <= {row.variant for row in comparison.rows}
    # Two seeds for the main pairs (GS vs MAE, dual + progressive vs plain), one elsewhere.
    seeds = {variant.name: variant.seeds for variant in rc.VARIANTS}
    assert seeds == {"base": (0, 1), "mae": (0, 1), "plain": (0, 1), "mse": (0,), "gradient": (0,),
                     "dual": (0,), "progressive": (0,), "lam0.5": (0,), "lam1": (0,), "lam5": (0,),
                     "dualw1": (0,)}
    assert [r.variant for r in rc.COMPARISON_BY_NAME["fig2"].rows] == ["base", "mae", "mse", "gradient"]
    assert [r.variant for r in rc.COMPARISON_BY_NAME["table4"].rows] == ["plain", "dual", "progressive", "base"]
    assert [r.variant for r in rc.COMPARISON_BY_NAME["table6"].rows] == ["lam0.5", "lam1", "base", "lam5", "dualw1"]

    configs = {run.name: rc.build_config(run, steps=800, data_dir=tmp_path / "train",
                                         benchmark_dir=tmp_path / "bench") for run in runs}
    base = flat(configs["base-s0"])
    assert (base["loss.name"], base["loss.lam"], base["loss.dual_weight"]) == ("gs", 2.0, 0.1)
    assert base["model.dual"] is True and base["model.progressive"] is True and base["scale"] == 4
    expected = {
        "base": {}, "mae": {"loss.name": "l1"}, "mse": {"loss.name": "mse"},
        "gradient": {"loss.name": "pixel_gradient"},
        "plain": {"model.dual": False, "model.progressive": False},
        "dual": {"model.progressive": False}, "progressive": {"model.dual": False},
        "lam0.5": {"loss.lam": 0.5}, "lam1": {"loss.lam": 1.0}, "lam5": {"loss.lam": 5.0},
        "dualw1": {"loss.dual_weight": 1.0},
    }
    for run in runs:
        config = flat(configs[run.name])
        # Equal budgets, same data and schedule: only the variant's fields and the seed differ.
        differs = {key: config[key] for key in config if config[key] != base[key]}
        want = dict(expected[run.variant.name])
        if run.seed != 0:
            want["seed"] = run.seed
        assert differs == want, run.name
        assert config["num_train_steps"] == 800 and config["data.train"] == f"folder:{tmp_path / 'train'}"
        assert config["data.val"] == f"folder:{tmp_path / 'bench' / 'Set5' / 'HR'}"
    # The decay sits near the end; the curve has 8 points.
    assert base["lr_decay_every"] == 600 and base["eval_every_steps"] == 100

    # --only takes comparisons, variants and run names.
    assert [r.name for r in rc.select_runs("table4")] == ["base-s0", "base-s1", "plain-s0", "plain-s1",
                                                          "dual-s0", "progressive-s0"]
    assert [r.name for r in rc.select_runs("mae,lam5-s0")] == ["mae-s0", "mae-s1", "lam5-s0"]
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        rc.select_runs("nope")


def test_paper_numbers_are_methods(rc):
    text = (REPO / "docs" / "method.md").read_text()
    for name, (set5, set14) in rc.PAPER_TABLE4.items():
        assert f"{set5:.2f} / {set14:.2f}" in text, name
    for name, (set5, _) in rc.PAPER_TABLE6.items():
        lam = {"lam0.5": "0.5", "lam1": "1.0", "base": "2.0", "lam5": "5.0"}[name]
        assert f"{lam} → {set5:.2f}" in text, name


def test_config_file_loads_with_a_step_count():
    spec = importlib.util.spec_from_file_location("comparison_config", REPO / "configs" / "comparison.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("160")
    assert (config.num_train_steps, config.lr_decay_every, config.eval_every_steps) == (160, 120, 20)
    assert (config.model.features, config.model.modules_per_block, config.data.hr_patch_size) == (32, 3, 64)
    assert config.data.train.startswith("folder:") and "T91" in config.data.train and "BSD200" in config.data.train
    assert module.get_config().num_train_steps == 800


# ---------------------------------------------------------------------------
# The report from run folders
# ---------------------------------------------------------------------------

def fake_runs(rc, out: pathlib.Path, psnr: dict[str, dict[int, tuple[float, float]]], default=(30.0, 27.0)):
    """Run folders with results.json, summary.json, config.json and metrics.jsonl.

    psnr: variant -> seed -> (Set5, Set14) PSNR; unlisted runs get `default`.
    """
    for run in rc.all_runs():
        set5, set14 = psnr.get(run.variant.name, {}).get(run.seed, default)
        folder = out / run.name
        folder.mkdir(parents=True)
        results = {"Set5": {"psnr": set5, "ssim": 0.85, "gradient_psnr": set5 - 5, "images": 5},
                   "Set14": {"psnr": set14, "ssim": 0.75, "gradient_psnr": set14 - 4, "images": 14},
                   "_meta": {"scale": 4, "bicubic": {
                       "Set5": {"psnr": 28.42, "ssim": 0.8104, "gradient_psnr": 23.0, "images": 5},
                       "Set14": {"psnr": 26.0, "ssim": 0.7027, "gradient_psnr": 22.0, "images": 14}}}}
        (folder / "results.json").write_text(json.dumps(results))
        (folder / "summary.json").write_text(json.dumps({"step": 800, "val_psnr": set5, "wall_seconds": 300.0,
                                                         "images_per_second": 40.0}))
        config = rc.build_config(run, steps=800, data_dir=pathlib.Path("/data/train"),
                                 benchmark_dir=pathlib.Path("/data/benchmark"))
        (folder / "config.json").write_text(json.dumps(config.to_dict()))
        events = [{"event": "train", "step": 100, "total": 1.0}]
        events += [{"event": "eval", "step": step, "psnr": set5 - 1.0 + step / 800, "psnr_bicubic": 28.42}
                   for step in range(100, 801, 100)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def row(markdown: str, label: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r}")


def section(markdown: str, title: str) -> str:
    start = markdown.index(f"## {title}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start: end if end > 0 else None]


def claim_line(markdown: str, prefix: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"- **{prefix}"))


def test_report_only_writes_tables_figures_and_verdicts(rc, tmp_path, capsys):
    out, report = tmp_path / "runs", tmp_path / "docs" / "results.md"
    fake_runs(rc, out, {
        "base": {0: (30.50, 27.40), 1: (30.40, 27.30)},   # mean 30.45 ± 0.05
        "mae": {0: (30.20, 27.38), 1: (30.10, 27.34)},    # GS − MAE: Set5 +0.30, Set14 -0.01
        "plain": {0: (30.00, 27.00), 1: (30.02, 27.02)},
        "dual": {0: (30.10, 27.10)}, "progressive": {0: (30.20, 27.20)},
        "lam0.5": {0: (29.50, 26.80)}, "lam1": {0: (30.00, 27.00)}, "lam5": {0: (30.80, 27.60)},
        "dualw1": {0: (30.44, 27.35)},
    })
    assert rc.main(["--report_only", "--output_dir", str(out), "--report", str(report)]) == 0
    markdown = report.read_text()
    assert "python scripts/run_comparisons.py --output_dir" in markdown and "do not edit by hand" in markdown
    for name in ("fig2_losses", "table4_dual_progressive", "table6_lambda_dual_weight"):
        assert (tmp_path / "docs" / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"(figures/{name}.png)" in markdown

    fig2 = section(markdown, "Fig. 2")
    assert row(fig2, "GS (ours)")[1:5] == ["0, 1", "30.45 ± 0.05", "0.8500 ± 0.0000", "25.45 ± 0.05"]
    assert row(fig2, "MAE (ℓ1)")[2] == "30.15 ± 0.05"
    assert row(fig2, "MSE (ℓ2)")[2] == "30.00"
    assert row(fig2, "Bicubic")[2:4] == ["28.42", "0.8104"]
    table4 = section(markdown, "Table 4")
    assert row(table4, "Plain")[-2:] == ["31.96", "28.37"]
    assert row(table4, "Dual + Progressive")[-2:] == ["32.24", "28.58"]
    assert row(table4, "Plain")[2] == "30.01 ± 0.01"
    table6 = section(markdown, "Table 6")
    assert row(table6, "λ 0.5")[-1] == "31.55" and row(table6, "λ 2, dual weight 1")[-1] == "-"

    # Seed noise pooled from the three two-seed pairs (base, mae, plain): 0.06 dB on Set5.
    gs_mae = claim_line(fig2, "GS (ours) − MAE")
    assert re.search(r"Set5 \+0\.30 dB \(seeds \+0\.30, \+0\.30; noise ±0\.\d\d\): agrees", gs_mae), gs_mae
    assert re.search(r"Set14 -0\.01 dB \(seeds \+0\.02, -0\.04; .*\): inconclusive", gs_mae), gs_mae
    # λ 5 beats λ 2 by 0.35 dB here; the paper finds no gain: that disagrees.
    assert claim_line(table6, "λ 5 − λ 2").endswith("disagrees.")
    assert "paper +0.00" in claim_line(table6, "λ 5 − λ 2")
    assert "the paper gives no number" in claim_line(table6, "λ 2, dual weight 1 − λ 2")
    # Table 4: everything beats plain by more than the noise on Set5.
    assert "agrees" in claim_line(table4, "Dual + Progressive − Plain")
    assert "paper +0.28" in claim_line(table4, "Dual + Progressive − Plain")

    # Flip GS and MAE: the same sentence now says the runs disagree with the paper.
    flipped_out = tmp_path / "flipped"
    fake_runs(rc, flipped_out, {"base": {0: (30.20, 27.35), 1: (30.10, 27.36)},
                                "mae": {0: (30.50, 27.40), 1: (30.40, 27.30)}})
    flipped = rc.write_report(flipped_out, tmp_path / "flipped.md")
    line = claim_line(section(flipped, "Fig. 2"), "GS (ours) − MAE")
    assert re.search(r"Set5 -0\.30 dB .*: disagrees", line), line
    # Seeds that disagree in sign are inconclusive, whatever the mean.
    mixed_out = tmp_path / "mixed"
    fake_runs(rc, mixed_out, {"base": {0: (31.00, 27.0), 1: (30.00, 27.0)},
                              "mae": {0: (30.00, 27.0), 1: (30.40, 27.0)}})
    line = claim_line(section(rc.write_report(mixed_out, tmp_path / "mixed.md"), "Fig. 2"), "GS (ours) − MAE")
    assert re.search(r"Set5 \+0\.30 dB \(seeds \+1\.00, -0\.40; .*: inconclusive", line), line


def test_missing_runs_are_reported_as_not_run(rc, tmp_path):
    out = tmp_path / "runs"
    fake_runs(rc, out, {})
    for name in ("mse-s0", "gradient-s0"):
        for path in (out / name).iterdir():
            path.unlink()
        (out / name).rmdir()
    markdown = rc.write_report(out, tmp_path / "results.md")
    assert row(section(markdown, "Fig. 2"), "MSE (ℓ2)")[1:3] == ["-", "not run"]
    assert "*GS beats MSE*: not run yet." in markdown
    assert "| mse-s0 | MSE (ℓ2) | 0 | not run |" in markdown


# ---------------------------------------------------------------------------
# A real tiny run of the script
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_end_to_end_run_then_resume(rc, tmp_path):
    rng = np.random.default_rng(0)

    def image(h, w, k):
        r, c = np.mgrid[0:h, 0:w]
        base = np.stack([r * 3 + k * 10, c * 2 + 20, r + c], -1)
        return np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)

    for sub in ("T91", "BSD200"):
        (tmp_path / "train" / sub).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(image(48, 56, i)).save(tmp_path / "train" / sub / f"{i}.png")
    for dataset in ("Set5", "Set14"):
        (tmp_path / "bench" / dataset / "HR").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(image(36 + 4 * i, 40, i)).save(tmp_path / "bench" / dataset / "HR" / f"{i}.png")
    out, report = tmp_path / "runs", tmp_path / "docs" / "results.md"
    flags = ["--output_dir", str(out), "--steps", "2", "--quick", "--only", "base-s0,mae-s0",
             "--train_dir", str(tmp_path / "train"), "--data_dir", str(tmp_path / "bench"),
             "--report", str(report)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(SCRIPT), *flags], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/2] base-s0" in result.stdout and "[2/2] mae-s0" in result.stdout and "ETA" in result.stdout
    for name in ("base-s0", "mae-s0"):
        summary = json.loads((out / name / "summary.json").read_text())
        results = json.loads((out / name / "results.json").read_text())
        config = json.loads((out / name / "config.json").read_text())
        assert summary["step"] == 2 and config["model"]["features"] == 4
        assert config["data"]["train"] == f"folder:{tmp_path / 'train' / 'T91'},{tmp_path / 'train' / 'BSD200'}"
        assert results["Set5"]["images"] == 2 and results["Set14"]["images"] == 2
    assert json.loads((out / "mae-s0" / "config.json").read_text())["loss"]["name"] == "l1"
    markdown = report.read_text()
    set5 = json.loads((out / "base-s0" / "results.json").read_text())["Set5"]["psnr"]
    assert row(section(markdown, "Fig. 2"), "GS (ours)")[2] == f"{set5:.2f}"
    assert (report.parent / "figures" / "fig2_losses.png").is_file()

    # Rerunning skips finished runs; changing the budget is refused, not mixed in.
    assert rc.main(flags) == 0
    assert rc.main([*flags[:3], "3", *flags[4:]]) == 2
