"""scripts/run_pilots.py: the pilots differ from the shipped recipe in one setting each; the
report block in docs/results.md comes from the run folders and survives run_comparisons.py."""

import importlib.util
import json
import pathlib
import sys

import pytest

from drn_jax import experiments

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rp():
    return _load("run_pilots", REPO / "scripts" / "run_pilots.py")


def flat(config) -> dict:
    """A config as ``{"model.features": 32, ...}``, with drn_jax.experiments' flattening."""
    return experiments.flatten(json.loads(json.dumps(config.to_dict())))


def test_each_pilot_changes_one_setting_of_the_shipped_recipe(rp, tmp_path):
    pilots = rp._pilots(400)
    names = [p.name for p in pilots]
    assert len(names) == len(set(names)) == 13
    kw = dict(steps=400, data_dir=tmp_path / "train", benchmark_dir=tmp_path / "bench")
    base = flat(rp.build_config(pilots[0], **kw))
    # The shipped x4 recipe at 400 steps: its two x0.3 decays scale with the step count.
    assert (base["model.features"], base["model.modules_per_block"], base["data.hr_patch_size"]) == (32, 6, 64)
    assert (base["num_train_steps"], base["lr_decay_every"], base["learning_rate"]) == (400, 167, 4e-4)
    assert (base["loss.name"], base["ema_decay"], base["batch_size"], base["seed"]) == ("gs", 0.999, 16, 0)
    groups = set()
    for pilot in pilots[1:]:
        config = flat(rp.build_config(pilot, **kw))
        changed = {k for k in base if config[k] != base[k]}
        expected = {k for k, _ in pilot.overrides} | ({"seed"} if pilot.seed else set())
        assert changed == expected, pilot.name
        groups.add(pilot.group)
    # What the issue asks to pilot, each at least once.
    assert {"schedule", "learning rate", "width/depth", "HR patch", "batch", "EMA", "loss"} <= groups
    assert flat(rp.build_config(rp.Pilot("w", "", "", (("warmup_steps", 20),)), **kw))["warmup_steps"] == 20


def fake_pilots(rp, out, psnr):
    for pilot in rp._pilots(400):
        set5, set14 = psnr.get(pilot.name, (28.0, 25.5))
        folder = out / pilot.name
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({
            "Set5": {"psnr": set5, "ssim": 0.8, "gradient_psnr": set5 - 4, "images": 5},
            "Set14": {"psnr": set14, "ssim": 0.7, "gradient_psnr": set14 - 3, "images": 14}}))
        (folder / "summary.json").write_text(json.dumps({"step": 400, "wall_seconds": 200.0,
                                                         "images_per_second": 32.0}))
        events = [{"event": "eval", "step": s, "psnr": set5 - 1 + s / 400} for s in (100, 200, 300, 400)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def row(markdown, label):
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[1] == label:
            return cells
    raise AssertionError(f"no row {label!r}")


def test_report_block_from_run_folders_and_kept_by_the_comparisons_report(rp, tmp_path):
    out, report = tmp_path / "pilots", tmp_path / "docs" / "results.md"
    fake_pilots(rp, out, {"base": (28.50, 26.00), "base-s1": (28.46, 26.03), "lr8e-4": (28.71, 25.90)})
    report.parent.mkdir()
    report.write_text("# Results\n\nthe comparisons\n")
    assert rp.main(["--report_only", "--output_dir", str(out), "--report", str(report)]) == 0
    markdown = report.read_text()
    assert markdown.startswith("# Results\n\nthe comparisons\n") and markdown.count(rp.BEGIN) == 1
    assert "python scripts/run_pilots.py --output_dir" in markdown
    assert row(markdown, "lr 8e-4")[2:6] == ["28.71", "+0.21", "25.90", "-0.10"]
    assert row(markdown, "the same, seed 1")[3] == "-0.04"
    assert "Seed alone (baseline, seed 0 vs 1): Set5 0.04 dB, Set14 0.03 dB." in markdown
    assert (tmp_path / "docs" / "figures" / "pilots_x4.png").stat().st_size > 1000
    # The shipped models' rows come from their cards.
    from drn_jax import zoo

    card = zoo.load_metadata("x8")["card"]
    assert f"{card['scores']['Set5']['psnr']:.2f} / {card['scores']['Set5']['ssim']:.4f}" in markdown

    # Rewriting replaces the block, once.
    fake_pilots(rp, tmp_path / "again", {"lr8e-4": (28.10, 25.90)})
    rp.write_report(tmp_path / "again", report)
    again = report.read_text()
    assert again.count(rp.BEGIN) == 1 and "| 28.10 |" in again and "28.71" not in again

    # Without run folders (a fresh checkout), the pilot sections are kept and the final runs are
    # rewritten from the cards.
    before = report.read_text()
    stale = before.replace(f"| `x8` | `configs/{card['source']}.py`", "| `x8` | `configs/stale.py`")
    assert stale != before
    report.write_text(stale)
    rp.write_report(tmp_path / "absent", report)
    assert report.read_text() == before

    # run_comparisons.py rewrites the rest of the file and keeps the block.
    rc = _load("run_comparisons", REPO / "scripts" / "run_comparisons.py")
    text = rc.write_report(tmp_path / "no-comparisons", report)
    assert text.startswith("# Results: the paper's ablations") and text.count(rp.BEGIN) == 1
    assert "| 28.10 |" in text and text.rstrip().endswith(rp.END)


def test_confirmation_runs_are_the_baseline_plus_their_overrides(rp, tmp_path):
    kw = dict(steps=1500, data_dir=tmp_path / "train", benchmark_dir=tmp_path / "bench")
    runs = rp.STAGES["confirm"].pilots(1500)
    assert runs[0].name == "base" and runs[0].overrides == ()
    base = flat(rp.build_config(runs[0], **kw))
    assert (base["num_train_steps"], base["lr_decay_every"], base["eval_every_steps"]) == (1500, 625, 187)
    for run in runs[1:]:
        config = flat(rp.build_config(run, **kw))
        assert {k for k in base if config[k] != base[k]} == {k for k, v in run.overrides if base[k] != v}, run.name
