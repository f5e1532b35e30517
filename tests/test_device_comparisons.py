"""scripts/run_device_comparisons.py and drn_jax.lockstep: the 8,000-step comparisons for an accelerator.

Tested here on the CPU at a tiny size: the plan (Fig. 2 and Table 4, two seeds each), the pack
of images and packages for a machine without them, runs trained in lockstep against the same
runs trained alone, and the whole device command on an install without TensorFlow,
ml_collections, scikit-image or Matplotlib, then its report.
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest

from drn_jax import checkpointing, data, experiments, image_io, lockstep, training
from drn_jax.model_factory import abstract_params, create_model
from drn_jax.rundir import RunDir

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_device_comparisons.py"


@pytest.fixture(scope="module")
def dc():
    sys.path.insert(0, str(REPO / "scripts"))  # the script imports run_comparisons beside it
    try:
        import run_device_comparisons
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return run_device_comparisons


@pytest.fixture
def folders(tmp_path, random_images):
    """Tiny T91/ (BMP, one grey), BSD200/ (PNG), Set5/HR and Set14/HR (PNG, one grey)."""
    train, bench = tmp_path / "train", tmp_path / "bench"
    random_images(train / "T91", [(40, 48, 3), (44, 40, 1)], seed=1, names=["t1", "t2"], suffix=".bmp")
    random_images(train / "BSD200", (2, (48, 56, 3)), seed=2, names=["100075", "100080"])
    random_images(bench / "Set5" / "HR", [(36, 40, 3), (40, 44, 3)], seed=3, names=["baby", "bird"])
    random_images(bench / "Set14" / "HR", [(40, 36, 3), (36, 36, 1)], seed=4, names=["baboon", "bridge"])
    return train, bench


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------

def test_plan_is_fig2_and_table4_with_two_seeds_at_8000_steps(dc, tmp_path):
    variants = dc.plan()
    assert [v.name for v in variants] == ["base", "mae", "mse", "gradient", "plain", "dual", "progressive"]
    assert all(v.seeds == (0, 1) for v in variants)
    runs = experiments.runs_of(variants)
    assert len(runs) == 14
    rows = {row.variant for name in ("fig2", "table4") for row in dc.rc.COMPARISON_BY_NAME[name].rows}
    assert rows == {v.name for v in variants}
    configs = {run.name: dc.rc.build_config(run, steps=8000, data_dir=tmp_path / "train",
                                            benchmark_dir=tmp_path / "bench") for run in runs}
    base = configs["base-s0"]
    assert (base.num_train_steps, base.lr_decay_every, base.eval_every_steps, base.log_every_steps) == (8000, 6000, 1000, 50)
    assert (base.model.features, base.model.modules_per_block, base.batch_size) == (32, 3, 16)
    expected = {"base": ("gs", True, True), "mae": ("l1", True, True), "mse": ("mse", True, True),
                "gradient": ("pixel_gradient", True, True), "plain": ("gs", False, False),
                "dual": ("gs", True, False), "progressive": ("gs", False, True)}
    for run in runs:
        config = configs[run.name]
        assert (config.loss.name, config.model.dual, config.model.progressive) == expected[run.variant.name]
        assert config.seed == run.seed
        for field in lockstep.SHARED_FIELDS:  # what runs in lockstep must share
            assert lockstep._get(config, field) == lockstep._get(base, field), (run.name, field)
    # One compiled chunk of 50 steps: it ends on every log (50), evaluation (1000) and checkpoint (2000) step.
    assert lockstep.chunk_steps(base, 0, 2) == 50
    assert [v.name for v in dc.plan((3,), "table4")] == ["base", "plain", "dual", "progressive"]
    with pytest.raises(ValueError, match="unknown name 'lam5'"):
        dc.plan(only="lam5")


def test_chunk_steps_end_on_every_log_evaluation_and_checkpoint(dc):
    config = dc.rc.build_config(dc.rc.all_runs()[0], steps=6, data_dir=pathlib.Path("t"), benchmark_dir=pathlib.Path("b"))
    config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 2, 4, 6
    assert lockstep.chunk_steps(config, 0, 2) == 2
    config.num_train_steps = 12
    config.log_every_steps = 4
    assert lockstep.chunk_steps(config, 0, 2) == 2  # gcd(4, 4, 6, 12)
    assert lockstep.chunk_steps(config, 3, 2) == 1  # resumed at step 3
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 12
    assert lockstep.chunk_steps(config, 0, 2) == 12
    config.data.hr_patch_size = 4096  # 2 seeds x 16 crops x 48 MiB: one step's crops over the cap
    assert lockstep.chunk_steps(config, 0, 2) == 1


# ---------------------------------------------------------------------------
# The pack
# ---------------------------------------------------------------------------

def test_pack_round_trip_gives_the_same_files_pixels_and_crops(dc, folders, tmp_path):
    train, bench = folders
    pack = tmp_path / "carry" / "comparisons.tar"
    manifest = dc.pack_images(train, bench, pack)
    assert len(manifest["files"]) == 8
    unpacked_train, unpacked_bench = dc.unpack_images(pack, tmp_path / "unpacked")
    for sub in ("T91", "BSD200"):
        originals = image_io.list_images(train / sub)
        copies = image_io.list_images(unpacked_train / sub)
        assert [p.name for p in copies] == [p.name for p in originals]  # t1.bmp stays t1.bmp
        for original, copy in zip(originals, copies):
            np.testing.assert_array_equal(image_io.read_image(copy), image_io.read_image(original))
    for dataset in ("Set5", "Set14"):
        for original in image_io.list_images(bench / dataset / "HR"):
            assert (unpacked_bench / dataset / "HR" / original.name).read_bytes() == original.read_bytes()
    # The training stream of the unpacked folders is the stream of the originals, crop for crop.
    streams = [data.create_train_dataset(experiments.train_source(folder), patch_size=32, batch_size=4, seed=1,
                                         process_index=0, process_count=1).as_numpy_iterator()
               for folder in (train, unpacked_train)]
    for _ in range(3):
        a, b = next(streams[0]), next(streams[1])
        for key in ("hr", "transform", "position"):
            np.testing.assert_array_equal(a[key], b[key])

    # A damaged member is named.
    with tarfile.open(pack) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for victim in ("benchmark/Set14/HR/bridge.png", "train/BSD200/100080.png.webp"):
        damaged = dict(members)
        blob = bytearray(damaged[victim])
        blob[len(blob) // 2] ^= 0xFF
        damaged[victim] = bytes(blob)
        bad = tmp_path / "bad.tar"
        with tarfile.open(bad, "w") as tar:
            for name, content in damaged.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        with pytest.raises(ValueError, match=victim.replace(".", r"\.")):
            dc.unpack_images(bad, tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="run `python scripts/run_device_comparisons.py prepare`"):
        dc.unpack_images(tmp_path / "missing.tar", tmp_path / "x")


BLOCKER = '''
import atexit, importlib.machinery, json, os, sys

# As on the device machine: no TensorFlow, TFDS, scikit-image or Matplotlib, and ml_collections
# and tifffile only from the carried folder.
sys.modules["tensorflow"] = None
sys.modules["tensorflow_datasets"] = None
_SITE = os.environ["DRN_TEST_CARRIED"]


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if "." in name:
            return None  # a submodule is found where its package was
        if name in ("skimage", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        if name in ("ml_collections", "tifffile"):
            spec = importlib.machinery.PathFinder.find_spec(name, [_SITE])
            if spec is None:
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
            return spec
        return None


sys.meta_path.insert(0, _Hide())


@atexit.register
def _report():
    record = os.environ.get("DRN_TEST_IMPORTS")
    if record:
        seen = {name: getattr(sys.modules.get(name), "__file__", None)
                for name in ("ml_collections", "tifffile", "tensorflow", "skimage", "matplotlib")}
        with open(record, "w") as file:
            json.dump(seen, file)
'''


@pytest.fixture
def device_env(tmp_path):
    """(environment, site folder) of a subprocess that sees only what the device machine has."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(BLOCKER)
    site = tmp_path / "carry" / "site"

    def env(with_site: bool = True, imports: pathlib.Path | None = None) -> dict:
        paths = [str(hooks), str(REPO)] + ([str(site)] if with_site else [])
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "JAX_PLATFORMS": "cpu",
                       "DRN_TEST_CARRIED": str(site if with_site else tmp_path / "nothing"),
                       "TF_CPP_MIN_LOG_LEVEL": "3"}
        environment.pop("XLA_FLAGS", None)  # one device, as on the accelerator
        if imports is not None:
            environment["DRN_TEST_IMPORTS"] = str(imports)
        return environment

    return env, site


def test_carried_packages_are_the_only_ml_collections(dc, device_env, tmp_path):
    env, site = device_env
    versions = dc.copy_packages(site)
    assert set(versions) == {"ml_collections", "tifffile"}
    assert (site / "ml_collections" / "__init__.py").is_file() and (site / "tifffile" / "__init__.py").is_file()
    assert not list(site.rglob("*.pyc")) and not list(site.rglob("*.so"))
    probe = "import ml_collections, tifffile; print(ml_collections.__file__)"
    found = subprocess.run([sys.executable, "-c", probe], env=env(), capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip().startswith(str(site))
    for module in ("ml_collections", "tensorflow", "matplotlib"):
        hidden = subprocess.run([sys.executable, "-c", f"import {module}"], env=env(with_site=False),
                                capture_output=True, text=True, timeout=120)
        assert hidden.returncode == 1 and "ModuleNotFoundError" in hidden.stderr, module


# ---------------------------------------------------------------------------
# Lockstep runs against single runs
# ---------------------------------------------------------------------------

def tiny_configs(dc, train, bench, names, steps, seeds=(0, 1)):
    overrides = [*dc.rc.QUICK_OVERRIDES, ("log_every_steps", 2), ("eval_every_steps", 2),
                 ("checkpoint_every_steps", steps)]
    runs = experiments.runs_of(dc.plan(seeds, ",".join(names)))
    return {run.name: dc.rc.build_config(run, steps=steps, data_dir=train, benchmark_dir=bench, overrides=overrides)
            for run in runs}


def final_params(workdir, config):
    params, step = checkpointing.restore_params(RunDir(workdir), None, abstract_params(create_model(config)), ema=False)
    return step, params


def events(workdir, kind):
    lines = (json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines())
    return {e["step"]: e for e in lines if e["event"] == kind}


@pytest.mark.slow
def test_lockstep_runs_equal_the_same_runs_trained_alone(dc, folders, tmp_path):
    """Two settings of two architectures (base: dual + progressive; plain) x seeds 0 and 1, 6 steps
    in chunks of 2, stopped at step 4 by an expired deadline and resumed; then runs alone."""
    train, bench = folders
    configs = tiny_configs(dc, train, bench, ["base", "plain"], steps=6)
    assert lockstep.chunk_steps(next(iter(configs.values())), 0, 2) == 2
    runs = [lockstep.LockstepRun(name, config, tmp_path / "lockstep" / name) for name, config in configs.items()]
    printed = []
    with pytest.raises(lockstep.OverBudgetError, match="stopped at step 4, checkpoints kept"):
        lockstep.train_in_lockstep(runs, deadline=0.0, print_fn=printed.append)
    assert printed[0].startswith("4 runs in 2 settings, 2 seeds; 2 steps per compiled chunk")
    assert all(RunDir(run.workdir).saved_steps() == [4] for run in runs)
    summaries = lockstep.train_in_lockstep(runs, print_fn=printed.append)
    assert "resumed from step 4 (data position 32)" in (runs[0].workdir / "log.txt").read_text()
    # One run of each setting and seed alone (each alone costs a compilation of train_and_evaluate).
    for name in ("base-s1", "plain-s0"):
        config = configs[name]
        alone = tmp_path / "alone" / name
        training.train_and_evaluate(config, alone)
        together = tmp_path / "lockstep" / name
        (step_a, params_a), (step_b, params_b) = final_params(alone, config), final_params(together, config)
        assert step_a == step_b == 6
        assert jax.tree.structure(params_a) == jax.tree.structure(params_b)
        for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6, err_msg=name)
        # The same training curve and validation scores, logged at the same steps.
        train_a, train_b = events(alone, "train"), events(together, "train")
        assert set(train_b) == {2, 4, 6} and set(train_b) <= set(train_a)
        for step in train_b:
            assert train_b[step]["total"] == pytest.approx(train_a[step]["total"], rel=1e-4), (name, step)
        eval_a, eval_b = events(alone, "eval"), events(together, "eval")
        assert set(eval_b) == set(eval_a) == {2, 4, 6}
        for step in eval_b:
            assert eval_b[step]["psnr"] == pytest.approx(eval_a[step]["psnr"], abs=1e-3), (name, step)
        summary = summaries[name]
        assert summary["step"] == 6 and summary["lockstep"] == {"runs": 4, "settings": 2, "chunk_steps": 2}
        assert summary["val_psnr"] == pytest.approx(json.loads((alone / "summary.json").read_text())["val_psnr"], abs=1e-3)
        assert json.loads((together / "config.json").read_text()) == json.loads((alone / "config.json").read_text())
    # Two models: plain has neither dual blocks nor the intermediate level's to_rgb.
    assert summaries["base-s0"]["parameters"] > summaries["plain-s0"]["parameters"]


# ---------------------------------------------------------------------------
# The device command, on an install without TensorFlow or ml_collections; its report
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_device_command_then_report(dc, folders, device_env, tmp_path):
    train, bench = folders
    env, site = device_env
    carry = site.parent
    assert dc.main(["prepare", "--train_dir", str(train), "--data_dir", str(bench), "--pack_dir", str(carry)]) == 0
    imports = tmp_path / "imports.json"
    export = tmp_path / "OUT" / "comparisons_8k"
    command = [sys.executable, str(SCRIPT), "train", "--pack", str(carry / "comparisons.tar"),
               "--output_dir", str(tmp_path / "runs"), "--export", str(export), "--quick", "--steps", "2",
               "--only", "base,plain", "--max_minutes", "60"]
    result = subprocess.run(command, cwd=REPO, env=env(imports=imports), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 runs in 2 settings, 2 seeds; 1 step per compiled chunk" in result.stdout
    seen = json.loads(imports.read_text())
    assert seen["ml_collections"].startswith(str(site)) and seen["tifffile"].startswith(str(site))
    assert seen["tensorflow"] is None and seen["skimage"] is None and seen["matplotlib"] is None

    names = ["base-s0", "base-s1", "plain-s0", "plain-s1"]
    assert sorted(p.name for p in export.iterdir() if p.is_dir()) == sorted(names)
    for name in names:
        files = {p.name for p in (export / name).iterdir()}
        assert {"config.json", "metrics.jsonl", "summary.json", "results.json"} <= files
        assert "checkpoints" not in files and "tensorboard" not in files
        results = json.loads((export / name / "results.json").read_text())
        assert results["Set5"]["images"] == 2 and results["Set14"]["images"] == 2
        assert json.loads((export / name / "summary.json").read_text())["lockstep"]["runs"] == 4
    state = json.loads((export / "comparisons.json").read_text())
    assert state["steps"] == 2 and state["seeds"] == [0, 1] and state["lockstep"] is True

    # The report: a block before the pilots' block, in run_comparisons' format.
    report = tmp_path / "docs" / "results.md"
    report.parent.mkdir()
    report.write_text("# Results\n\n## Fig. 2: loss functions\n\nold\n\n<!-- pilots:begin -->\npilots\n<!-- pilots:end -->\n")
    assert dc.main(["report", "--output_dir", str(export), "--report", str(report)]) == 0
    text = report.read_text()
    assert text.index("## Fig. 2: loss functions\n\nold") < text.index(dc.BEGIN) < text.index("<!-- pilots:begin -->")
    block = text[text.index(dc.BEGIN):text.index(dc.END)]
    assert "## Fig. 2 and Table 4 at 2 steps, two seeds each" in block
    assert "trained in lockstep in one process (2 compiled programs" in block

    def row(title, label):
        section = block[block.index(f"### {title}"):]
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == label:
                return cells
        raise AssertionError(label)

    psnrs = [json.loads((export / f"plain-s{s}" / "results.json").read_text())["Set5"]["psnr"] for s in (0, 1)]
    plain = row("Table 4", "Plain")
    assert plain[1] == "0, 1" and plain[2].startswith(f"{np.mean(psnrs):.2f} ± ")
    assert row("Table 4", "Dual")[2] == "not run" and row("Fig. 2", "MAE (ℓ1)")[2] == "not run"
    assert row("Fig. 2", "GS (ours)")[1] == "0, 1"
    assert "**Dual + Progressive − Plain** (paper: Dual + Progressive beats Plain). Set5" in block
    assert "| plain-s1 | Plain | 1 | 2 |" in block
    assert (report.parent / "figures" / "table4_dual_progressive_8k.png").stat().st_size > 1000

    # run_comparisons' report keeps the block where it is; rewriting the block replaces it.
    dc.rc.write_report(tmp_path / "no_runs", report)
    text = report.read_text()
    assert text.index("## Runs") < text.index(dc.BEGIN) < text.index("<!-- pilots:begin -->")
    assert dc.main(["report", "--report", str(report)]) == 0
    text = report.read_text()
    assert text.count(dc.BEGIN) == 1 and "Not run yet: no accelerator was available" in text
    assert text.index(dc.BEGIN) < text.index("<!-- pilots:begin -->") and "pilots\n<!-- pilots:end -->" in text
