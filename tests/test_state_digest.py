"""scripts/state_digest.py: the digests of a run's last checkpoint, and the comparison of two runs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import REPO, run_python


def _save(workdir, step, tree):
    ocp.PyTreeCheckpointer().save((workdir / "checkpoints" / str(step) / "state").absolute(), tree)


def _tree(bump: float = 0.0):
    return {"params": {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3) + bump,
                                "bias": np.zeros(3, np.float32)}},
            "step": np.asarray(7, np.int32)}


def _expected_combined(tree) -> str:
    # Written out here, independently of the script: sha256(dtype + shape + bytes) per array,
    # then sha256 of "path digest" lines in path order.
    leaves = {"/params/conv/bias": tree["params"]["conv"]["bias"],
              "/params/conv/kernel": tree["params"]["conv"]["kernel"], "/step": tree["step"]}
    lines = ""
    for path in sorted(leaves):
        a = leaves[path]
        lines += f"{path} {hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode() + a.tobytes()).hexdigest()}\n"
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.mark.slow
def test_identical_runs_match_and_one_ulp_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _save(a, 1, _tree(5.0))  # an earlier step: only the last one counts
    _save(a, 4, _tree())
    _save(b, 4, _tree())
    changed = _tree()
    changed["params"]["conv"]["kernel"][1, 2] = np.nextafter(np.float32(5), np.float32(6))
    _save(c, 4, changed)

    same = run_python(REPO / "scripts" / "state_digest.py", f"--workdir={a}", f"--workdir={b}",
                      f"--output={tmp_path / 'd.json'}")
    assert same.returncode == 0, same.stderr
    assert f"{b}: identical to the first" in same.stdout
    report = json.loads((tmp_path / "d.json").read_text())
    assert [r["step"] for r in report] == [4, 4]
    assert [r["values"] for r in report] == [10, 10] and report[0]["arrays"] == 3
    assert report[0]["combined"] == report[1]["combined"] == _expected_combined(_tree())

    differ = run_python(REPO / "scripts" / "state_digest.py", f"--workdir={a}", f"--workdir={c}")
    assert differ.returncode == 1, differ.stderr
    assert f"{c}: step 4 against 4; 1 of 3 arrays differ: /params/conv/kernel" in differ.stdout

    missing = run_python(REPO / "scripts" / "state_digest.py", f"--workdir={tmp_path / 'none'}")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none' / 'checkpoints'}: no checkpoint; train first"
