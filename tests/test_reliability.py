"""Crashes, preemption, numerics, full and unwritable disks: what a run leaves behind.

* ``kill -9`` at several moments, one of them inside a checkpoint commit: the restarted run
  resumes from the last complete checkpoint and ends with the parameters of an
  uninterrupted run.
* A finished checkpoint that cannot be read is skipped (and set aside); a leftover
  temporary folder is removed.
* A non-finite loss stops the run with one line naming the step and the terms; nothing
  after the last good checkpoint is saved.
* A full disk or an unwritable workdir: one line naming the folder, earlier checkpoints intact.

The checkpoint folder's failure modes are tested without training where they can be: an
unreadable checkpoint and a failing save on a small state (`small_state`), the read-only workdir
on an initial state saved as a checkpoint (`save_initial_state`). The subprocess runs share the
test session's persistent JAX compilation cache (conftest.py) with this process, so a program is
compiled once per session, not once per run.
"""

import contextlib
import json
import os
import pathlib
import re
import subprocess

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drn_jax import checkpointing, cli, files, loading, model_factory, train_state, training
from drn_jax.errors import NonFiniteLossError
from drn_jax.rundir import RunDir
from helpers import (REPO, TINY, Run, config_flags, data_overrides, error_lines, subprocess_env, tiny_config,
                     write_photos)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> pathlib.Path:
    return write_photos(tmp_path_factory.mktemp("images"))


def restored_params(workdir: pathlib.Path, step: int | None = None):
    checkpoint = workdir / "checkpoints" / str(step) if step is not None else None
    return loading.load_model(workdir=None if checkpoint else workdir, checkpoint=checkpoint).variables["params"]


def saved_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def leftovers(workdir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name)


def all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(tree))


def small_state(step: int) -> train_state.TrainState:
    """A TrainState of a few small arrays, other values at every step: what the checkpoint
    folder's failure modes are tested on, without a model to compile."""
    params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), 0.5 * step), "bias": jnp.arange(4.0) + step}}
    opt_state = {"count": jnp.asarray(step, jnp.int32), "mu": jax.tree.map(lambda p: p / 10, params)}
    return train_state.TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state,
                                  ema_params=None)


def save_small_states(checkpoints: pathlib.Path, steps) -> None:
    """`small_state(step)` saved for each step, with the data position of `step` batches of 8."""
    checkpointer = checkpointing.Checkpointer(checkpoints)
    for step in steps:
        checkpointer.save(step, small_state(step), step * 8)
    checkpointer.close()


def restored_small_state(checkpoints: pathlib.Path) -> tuple[train_state.TrainState, int]:
    """(the newest readable small state in `checkpoints`, its data position)."""
    checkpointer = checkpointing.Checkpointer(checkpoints)
    try:
        return checkpointer.restore_or(small_state(0))
    finally:
        checkpointer.close()


def save_initial_state(config, workdir: pathlib.Path, step: int) -> None:
    """`config`'s initial state saved as checkpoint `step` of a run in `workdir` (replicated, at
    the data position of `step` batches, with the run's config.json), as if trained for `step`
    steps: a run to resume, without compiling a training step."""
    model = model_factory.create_model(config)
    state = train_state.create_train_state(config, model, train_state.create_optimizer(config),
                                           jax.random.key(config.seed))
    state = training.replicate(state.replace(step=jnp.asarray(step, jnp.int32)), training.make_mesh())
    run = RunDir(workdir)
    checkpointer = checkpointing.Checkpointer(run.checkpoints, keep=config.keep_checkpoints)
    checkpointer.save(step, state, step * config.batch_size)
    checkpointer.close()
    files.write_json(run.config_file, config.to_dict())


# ---------------------------------------------------------------------------
# kill -9 and unreadable checkpoints
# ---------------------------------------------------------------------------

KILL_RUN = {**TINY, "num_train_steps": 9}


@pytest.fixture(scope="module")
def reference_run(image_folder, tmp_path_factory):
    """The uninterrupted 9-step run, in this process (8 devices, like the subprocesses)."""
    workdir = tmp_path_factory.mktemp("reference")
    training.train_and_evaluate(tiny_config(**KILL_RUN, **data_overrides(image_folder)), workdir)
    assert saved_steps(workdir) == [3, 6, 9]
    return workdir


@pytest.mark.slow
def test_kill_9_resumes_from_last_complete_checkpoint(image_folder, reference_run, tmp_path):
    args = [f"--workdir={tmp_path}", *config_flags({**KILL_RUN, **data_overrides(image_folder)})]
    # 1. Killed inside the commit of checkpoint 6: the test hook holds the commit (before
    # orbax's rename) long enough to kill it there. Checkpoint 3 is complete by then: orbax
    # starts a save only once the previous one has finished.
    run = Run(args, subprocess_env(DRN_TEST_COMMIT_DELAY="6:60"),
              script=REPO / "tests" / "slow_commit_train.py")
    run.wait_for(r"test hook: committing checkpoint .*/checkpoints/6\.orbax-checkpoint-tmp")
    run.kill_9()
    assert saved_steps(tmp_path) == [3]
    assert leftovers(tmp_path) == ["6.orbax-checkpoint-tmp"]  # the half-committed save

    # 2. Restarted, killed again a few steps later (possibly while saving 6).
    run = Run(args, subprocess_env())
    run.wait_for(r"^resumed from step 3 ")
    run.wait_for(r"^step 7/9")
    run.kill_9()
    assert saved_steps(tmp_path) in ([3], [3, 6])
    resume_from = saved_steps(tmp_path)[-1]

    # 3. Restarted to the end: the parameters of the uninterrupted run.
    run = Run(args, subprocess_env())
    assert run.finish() == 0, run.err[-3000:]
    assert f"resumed from step {resume_from} " in run.out
    assert saved_steps(tmp_path) == [3, 6, 9]
    assert leftovers(tmp_path) == []
    chex.assert_trees_all_close(restored_params(tmp_path), restored_params(reference_run), atol=1e-7, rtol=0)
    # Every step was trained exactly once per run that got there: steps 1-9 are logged.
    logged = {json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "train"}
    assert logged == set(range(1, 10))


def test_unreadable_checkpoint_and_leftover_tmp_are_skipped(tmp_path, caplog):
    """Step 9's files truncated (as after a power loss) and a stale tmp folder: resume from 6."""
    checkpoints = tmp_path / "checkpoints"
    save_small_states(checkpoints, [3, 6, 9])
    for path in (checkpoints / "9" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    stale = checkpoints / "12.orbax-checkpoint-tmp"
    (stale / "state").mkdir(parents=True)
    (stale / "state" / "junk").write_bytes(b"\0" * 100)

    checkpointer = checkpointing.Checkpointer(checkpoints)  # as a resumed run opens it
    with caplog.at_level("WARNING", logger="drn_jax.checkpointing"):
        state, position = checkpointer.restore_or(small_state(0))
    assert int(state.step) == 6 and position == 48  # resumed from 6
    chex.assert_trees_all_close(state, small_state(6), atol=0, rtol=0)
    checkpointer.save(9, small_state(9), 72)  # the resumed run's step 9
    checkpointer.close()
    assert int(restored_small_state(checkpoints)[0].step) == 9
    assert any("checkpoint 9 cannot be read" in record.getMessage() for record in caplog.records)
    assert (checkpoints / "9.unreadable").is_dir()  # kept for inspection, not deleted
    assert not stale.exists()
    assert saved_steps(tmp_path) == [3, 6, 9]
    # Saved again from 6, the new step 9 equals the first one.
    chex.assert_trees_all_close(restored_small_state(checkpoints)[0].params, small_state(9).params,
                                atol=0, rtol=0)


# ---------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_non_finite_loss_stops_with_one_line_naming_step_and_terms(image_folder, tmp_path, capsys):
    # The learning rate grows 10^4-fold every 2 steps: finite at first, then the loss blows up.
    config = tiny_config(num_train_steps=40, checkpoint_every_steps=2, lr_decay_every=2, lr_decay_factor=1e4,
                         keep_checkpoints=100, **data_overrides(image_folder))
    with pytest.raises(SystemExit) as exit_info, cli.user_errors():
        training.train_and_evaluate(config, tmp_path)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    match = re.match(r"error: step (\d+): non-finite ([a-z_0-9, ]+) \(", lines[0])
    assert match, lines[0]
    bad_step, terms = int(match.group(1)), match.group(2).split(", ")
    # Which term overflows first depends on float32 details; each named one is a real metric.
    metric_names = {"total", "primal", "dual", "grad_norm", "learning_rate"} | {
        f"{kind}_{i}" for kind in ("primal", "dual") for i in range(3)}
    assert terms and set(terms) <= metric_names, terms
    for term in terms:
        assert re.search(rf"\b{term}=(nan|inf|-inf)\b", lines[0]), (term, lines[0])
    steps = saved_steps(tmp_path)
    assert steps and max(steps) < bad_step, (steps, bad_step)
    assert f"the last checkpoint, step {max(steps)} in {tmp_path / 'checkpoints'}, is kept" in lines[0]
    # Every saved state is finite, and the run would resume from the last one.
    for step in steps:
        assert all_finite(restored_params(tmp_path, step)), step
    assert bad_step > 2  # the first steps trained


@pytest.mark.slow
def test_non_finite_state_is_never_saved(image_folder, tmp_path, monkeypatch):
    """Parameters turned NaN by an update whose metrics were still finite: not saved either."""
    import optax

    original = training.create_optimizer

    def poisoned_optimizer(config):
        def update(updates, count, params=None):
            poison = jnp.where(count == 3, jnp.nan, 1.0)  # the 4th update
            return jax.tree.map(lambda u: u * poison, updates), count + 1
        return optax.chain(original(config),
                           optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update))

    monkeypatch.setattr(training, "create_optimizer", poisoned_optimizer)
    config = tiny_config(num_train_steps=8, checkpoint_every_steps=2, **data_overrides(image_folder))
    with pytest.raises(NonFiniteLossError, match=r"step 4: the parameters or the optimiser state "
                       r"are not finite.*the last checkpoint, step 2 in"):
        training.train_and_evaluate(config, tmp_path)
    assert saved_steps(tmp_path) == [2]
    assert all_finite(restored_params(tmp_path))


# ---------------------------------------------------------------------------
# Full and unwritable disks
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); "
                    "test_save_error_is_one_line_and_keeps_checkpoints covers the error path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: pathlib.Path, leave: int) -> None:
    """Fills the file system holding `folder`, then frees `leave` bytes."""
    filler = folder / f"filler{len(list(folder.glob('filler*')))}"
    chunk = os.urandom(1 << 16)
    try:
        handle = open(filler, "wb", buffering=0)  # unbuffered: close() has nothing left to flush
    except OSError:  # already so full that not even an empty file fits
        if leave:
            raise
        return
    with handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(chunk)
    size = filler.stat().st_size
    with open(filler, "r+b") as handle:
        handle.truncate(max(0, size - leave))


@pytest.mark.slow
def test_full_disk_is_one_line_and_keeps_checkpoints(image_folder, tmp_path, capsys):
    """A real full file system (a tmpfs): the save of step 6 fails, checkpoint 3 survives."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        workdir = disk / "run"
        run_config = {**TINY, **data_overrides(image_folder)}
        save_initial_state(tiny_config(**run_config, num_train_steps=3), workdir, 3)
        before = restored_params(workdir)
        checkpoint_bytes = sum(p.stat().st_size for p in (workdir / "checkpoints" / "3").rglob("*")
                               if p.is_file())
        fill(disk, leave=checkpoint_bytes // 3)  # room for logs, not for a checkpoint
        run = Run([f"--workdir={workdir}", *config_flags({**run_config, "num_train_steps": 6})],
                  subprocess_env())
        assert run.finish() == 2, run.err[-3000:]
        lines = error_lines(run.err)
        assert len(lines) == 1 and "Traceback" not in run.err, run.err[-3000:]
        assert str(workdir / "checkpoints") in lines[0] and "No space left on device" in lines[0], lines[0]
        assert "checkpoint 3 is kept" in lines[0]
        # Not even room for a log line: still one line naming the workdir.
        fill(disk, leave=0)
        with pytest.raises(SystemExit) as exit_info, cli.user_errors():
            training.train_and_evaluate(tiny_config(**run_config, num_train_steps=6), workdir)
        assert exit_info.value.code == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and str(workdir) in lines[0] and "No space left on device" in lines[0], lines
        for filler in disk.glob("filler*"):
            filler.unlink()
        assert saved_steps(workdir) == [3]
        chex.assert_trees_all_close(restored_params(workdir), before, atol=0, rtol=0)
        # With space again, the same command resumes from 3 and removes the partial save.
        summary = training.train_and_evaluate(tiny_config(**run_config, num_train_steps=6), workdir)
        assert summary["step"] == 6 and saved_steps(workdir) == [3, 6] and leftovers(workdir) == []


def test_read_only_workdir_is_one_line_before_compiling(image_folder, tmp_path, monkeypatch, capsys):
    """A workdir on a read-only file system (root ignores chmod, not a read-only mount)."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        workdir = disk / "run"
        run_config = {**TINY, **data_overrides(image_folder)}
        save_initial_state(tiny_config(**run_config, num_train_steps=3), workdir, 3)
        before = restored_params(workdir)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

        def must_not_compile(*args, **kwargs):
            raise AssertionError("compiled before reporting the read-only workdir")
        monkeypatch.setattr(training, "make_train_step", must_not_compile)
        with pytest.raises(SystemExit) as exit_info, cli.user_errors():
            training.train_and_evaluate(tiny_config(**run_config, num_train_steps=6), workdir)
        assert exit_info.value.code == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and str(workdir) in lines[0] and "Read-only file system" in lines[0], lines
        assert saved_steps(workdir) == [3]
        chex.assert_trees_all_close(restored_params(workdir), before, atol=0, rtol=0)


def test_workdir_under_a_file_is_one_line_before_compiling(image_folder, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the workdir's parent should be")

    def must_not_compile(*args, **kwargs):
        raise AssertionError("compiled before reporting the unwritable workdir")
    monkeypatch.setattr(training, "make_train_step", must_not_compile)
    with pytest.raises(SystemExit) as exit_info, cli.user_errors():
        training.train_and_evaluate(tiny_config(**data_overrides(image_folder)), blocker / "run")
    assert exit_info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(blocker / "run") in lines[0] and "writable --workdir" in lines[0], lines


def test_save_error_is_one_line_and_keeps_checkpoints(tmp_path, monkeypatch, capsys):
    """ENOSPC raised by the write itself, on a small state (for machines where the tmpfs test
    cannot mount)."""
    import errno

    checkpoints = tmp_path / "checkpoints"
    save_small_states(checkpoints, [3])
    before = restored_small_state(checkpoints)[0].params
    original = checkpointing.ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, step, *args, **kwargs)
    monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", full_disk)
    checkpointer = checkpointing.Checkpointer(checkpoints)  # as the resumed run opens it
    try:
        with pytest.raises(SystemExit) as exit_info, cli.user_errors():
            checkpointer.save(6, small_state(6), 48)
    finally:
        checkpointer.close()
    assert exit_info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0] == (f"error: {tmp_path / 'checkpoints'}: cannot write checkpoint 6 (No space left on "
                        "device); checkpoint 3 is kept; free some space or choose a writable --workdir")
    assert saved_steps(tmp_path) == [3]
    chex.assert_trees_all_close(restored_small_state(checkpoints)[0].params, before, atol=0, rtol=0)
