"""The command-line vocabulary of drn_jax/cli.py's docstring, checked in the source of every script.

Every entry point, script and benchmark parses absl flags (``--output_dir``, ``--output``,
``--quick``, ``--data_dir``, ...). This reads the files with `ast` and checks that none imports
argparse, but benchmarks/bench_peer.py (it runs in a torch-only environment without absl), and
that none defines a flag under a retired name; then it runs each file's top level once, in one
subprocess, to see that no flag is defined twice.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Retired flag names and what took their place: --out, --output_path -> --output (one file) or
# --output_dir (a folder); --tiny -> --quick; --override K=V -> --config.<field>=VALUE;
# --markdown, --model, --variant: older names of report and model choices (--config_name for a
# benchmark's built-in config); --data, --dir, --to: --data_dir, --train_dir, --tfds_data_dir,
# --pretrained_dir or a name that says what the folder holds.
RETIRED = frozenset({"out", "output_path", "result", "markdown", "tiny", "override", "model", "variant",
                     "data", "dir", "to"})
ARGPARSE_ALLOWED = frozenset({"benchmarks/bench_peer.py"})


def scanned_files() -> list[str]:
    """Every .py file in benchmarks/ and scripts/, with train.py and eval.py (paths from the repo)."""
    files = [*REPO.glob("benchmarks/*.py"), *REPO.glob("scripts/*.py"), REPO / "train.py", REPO / "eval.py"]
    return sorted(path.relative_to(REPO).as_posix() for path in files if path.is_file())


def imports_argparse(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "argparse" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def defined_flags(tree: ast.AST) -> set[str]:
    """The names of the flags the source defines: ``flags.DEFINE_*("name", ...)`` (or ``name=``)
    and argparse's ``add_argument("--name", ...)``, leading dashes taken off."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called = _called_name(node)
        if called.startswith("DEFINE_"):
            given = node.args[:1] + [kw.value for kw in node.keywords if kw.arg == "name"]
            names.update(arg.value for arg in given if isinstance(arg, ast.Constant) and isinstance(arg.value, str))
        elif called == "add_argument":
            names.update(arg.value.lstrip("-") for arg in node.args
                         if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"))
    return {name.replace("-", "_") for name in names}


def _parse(relative: str) -> ast.AST:
    path = REPO / relative
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_scan_finds_the_files_and_their_flags():
    files = scanned_files()
    assert {"train.py", "eval.py", "benchmarks/bench_peer.py", "scripts/run_comparisons.py"} <= set(files)
    assert imports_argparse(_parse("benchmarks/bench_peer.py"))
    assert "mode" in defined_flags(_parse("benchmarks/bench_peer.py"))  # add_argument("--mode", ...)
    assert "quick" in defined_flags(_parse("scripts/run_comparisons.py"))  # flags.DEFINE_bool("quick", ...)
    source = ast.parse("from argparse import ArgumentParser\nflags.DEFINE_string(name='out', default=None, "
                       "help='')\nparser.add_argument('-o', '--output-path')\n")
    assert imports_argparse(source) and defined_flags(source) == {"out", "o", "output_path"}


@pytest.mark.parametrize("relative", [f for f in scanned_files() if f not in ARGPARSE_ALLOWED])
def test_no_argparse(relative):
    assert not imports_argparse(_parse(relative)), f"{relative} imports argparse; use absl flags (drn_jax/cli.py)"


@pytest.mark.parametrize("relative", scanned_files())
def test_no_retired_flag_names(relative):
    retired = sorted(defined_flags(_parse(relative)) & RETIRED)
    assert not retired, f"{relative} defines retired flags {retired}; see drn_jax/cli.py's vocabulary"


def test_each_script_defines_its_flags_once():
    """Running each file's top level (as absl does before parsing) defines every flag once: a
    script that imports another (tpu_trunk imports tpu_aot) must not define a flag name twice,
    which absl reports only when the script starts (DuplicateFlagError)."""
    import subprocess
    import sys

    files = [f for f in scanned_files() if f not in ARGPARSE_ALLOWED]  # bench_peer needs torch
    code = ("import runpy, sys\nsys.path[:0] = ['benchmarks', 'scripts']\n"
            "for f in sys.argv[1:]:\n"
            "    from absl import flags\n"
            "    for name in list(flags.FLAGS):\n"  # a fresh flag registry per file
            "        delattr(flags.FLAGS, name)\n"
            "    try:\n"
            "        runpy.run_path(f, run_name='flag_check')\n"
            "    except flags.DuplicateFlagError as err:\n"
            "        print(f'{f}: {err}')\n")
    out = subprocess.run([sys.executable, "-c", code, *files], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", out.stdout
