#!/usr/bin/env python3
"""The sha256 of every array of a run's last checkpoint, and whether two runs' are identical.

    python scripts/state_digest.py --workdir runs/a                   # one run: its digests
    python scripts/state_digest.py --workdir runs/a --workdir runs/b  # exit 1 where they differ

A refactoring that must not change what training computes (issue 25's "bit-identical") is shown
by training at both commits with the same command and comparing the saved states: parameters,
EMA and the optimiser's state, array by array, by their bytes, dtype and shape. The combined
digest is the sha256 of the arrays' paths and digests, in path order.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging

from drn_jax import cli
from drn_jax.rundir import RunDir

_WORKDIR = flags.DEFINE_multi_string("workdir", None, "A training run's folder; give two to compare them.",
                                     required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Also write the digests here as JSON.")


def array_digest(array: np.ndarray) -> str:
    """The sha256 of an array's dtype, shape and C-ordered bytes, as hex."""
    array = np.asarray(array, order="C")  # not ascontiguousarray, which makes 0-d arrays 1-d
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def tree_digests(tree: object) -> dict[str, str]:
    """``{path: array_digest}`` for every array leaf of a nested dict/list tree."""
    out: dict[str, str] = {}
    stack: list[tuple[str, object]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, Mapping):
            stack.extend((f"{prefix}/{key}", value) for key, value in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((f"{prefix}/{i}", value) for i, value in enumerate(node))
        elif node is not None:
            out[prefix or "/"] = array_digest(np.asarray(node))
    return dict(sorted(out.items()))


def combined_digest(digests: Mapping[str, str]) -> str:
    """The sha256 of ``path digest`` lines, in path order, as hex."""
    lines = "".join(f"{path} {digests[path]}\n" for path in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def last_state(workdir: str) -> tuple[int, dict[str, str], int]:
    """The last checkpoint's step, its array digests and its number of values."""
    run = RunDir(workdir)
    steps = sorted(int(p.name) for p in run.checkpoints.glob("[0-9]*") if p.name.isdigit())
    if not steps:
        raise FileNotFoundError(f"{run.checkpoints}: no checkpoint; train first")
    state = ocp.PyTreeCheckpointer().restore((run.checkpoints / str(steps[-1]) / "state").absolute())
    values = sum(np.asarray(leaf).size for leaf in _leaves(state))
    return steps[-1], tree_digests(state), values


def _leaves(tree: object):
    if isinstance(tree, Mapping):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _leaves(value)
    elif tree is not None:
        yield tree


def main(argv: Sequence[str]) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax's read statistics
    # Restored on the host as saved; the topology cannot differ for a digest.
    warnings.filterwarnings("ignore", message="Sharding info not provided")
    runs = []
    for workdir in _WORKDIR.value:
        step, digests, values = last_state(workdir)
        runs.append({"workdir": workdir, "step": step, "arrays": len(digests), "values": values,
                     "combined": combined_digest(digests), "digests": digests})
        print(f"{workdir}: step {step}, {len(digests)} arrays, {values:,} values, "
              f"combined {runs[-1]['combined'][:16]}")
    if _OUTPUT.value:
        pathlib.Path(_OUTPUT.value).write_text(json.dumps(runs, indent=1) + "\n")
    first, *others = runs
    differ = False
    for other in others:
        paths = sorted(set(first["digests"]) | set(other["digests"]))
        changed = [p for p in paths if first["digests"].get(p) != other["digests"].get(p)]
        same = not changed and first["step"] == other["step"]
        differ |= not same
        print(f"{other['workdir']}: " + ("identical to the first" if same else
              f"step {other['step']} against {first['step']}; {len(changed)} of {len(paths)} arrays "
              f"differ: {', '.join(changed[:5])}"))
    return 1 if differ else 0

if __name__ == "__main__":
    app.run(lambda argv: sys.exit(cli.exit_status(main, argv)), flags_parser=cli.parse_flags)
