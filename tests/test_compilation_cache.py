"""JAX's persistent compilation cache in the entry points (drn_jax.cli.use_compilation_cache):
which folder it uses, and that a second run of the same command compiles nothing.

The subprocess runs go through tests/count_compiles.py, which counts, from JAX's monitoring
events, every program the backend was asked for and those loaded from the persistent cache.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from drn_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
COUNTER = REPO / "tests" / "count_compiles.py"
ENV = cli.COMPILATION_CACHE_ENV


def test_cache_folder_first_match_wins():
    home = pathlib.Path.home()
    where = cli.compilation_cache_dir
    default = home / ".cache" / "drn-jax" / "xla"
    assert where(None, {}) == default
    assert where(None, {"XDG_CACHE_HOME": "/xdg"}) == pathlib.Path("/xdg/drn-jax/xla")
    assert where(None, {"XDG_CACHE_HOME": "relative/cache"}) == default  # invalid under XDG
    assert where(None, {"XDG_CACHE_HOME": ""}) == default
    assert where(None, {"XDG_CACHE_HOME": "/xdg"}, jax_dir="/jax") == pathlib.Path("/jax")
    assert where(None, {ENV: "/env"}, jax_dir="/jax") == pathlib.Path("/env")
    assert where("/flag", {ENV: "/env"}, jax_dir="/jax") == pathlib.Path("/flag")
    assert where("~/cache", {}) == home / "cache"
    for off in ("off", "OFF", " off ", ""):
        assert where(off, {ENV: "/env"}, jax_dir="/jax") is None, off
        assert where(None, {ENV: off}, jax_dir="/jax") is None, off
    assert where("/flag", {ENV: "off"}) == pathlib.Path("/flag")  # the flag wins over the variable


def run_counted(tmp_path: pathlib.Path, label: str, command: list[str], env: dict[str, str]):
    """Runs ``python tests/count_compiles.py COMMAND`` in `tmp_path`; (counts, stderr)."""
    counts = tmp_path / f"{label}.json"
    environ = {key: value for key, value in os.environ.items()
               if key not in (ENV, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    environ.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", DRN_TEST_COMPILE_COUNTS=str(counts), **env)
    result = subprocess.run([sys.executable, str(COUNTER), *command], cwd=tmp_path, env=environ,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{label}: {result.stderr[-3000:]}"
    return json.loads(counts.read_text()), result.stderr


def entries(folder: pathlib.Path) -> set[str]:
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_drn_upscale_second_run_compiles_nothing(tmp_path, photo):
    """drn-upscale with the shipped x4: the first run compiles and fills the default folder
    ($XDG_CACHE_HOME/drn-jax/xla); the same command again loads every program and compiles none;
    --compilation_cache=off compiles them all again; an unusable folder is a note, not a failure."""
    def upscale(label: str, *flags: str, env: dict[str, str]):
        return run_counted(tmp_path, label, ["drn_jax.upscale", str(photo), "--pretrained", "x4", "--no_progress",
                                             "--overwrite", "--output_dir", str(tmp_path / label), *flags], env)

    xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    folder = tmp_path / "xdg" / "drn-jax" / "xla"
    first, _ = upscale("first", env=xdg)
    assert first["compiled"] == first["programs"] > 0 and first["cache_hits"] == 0
    written = entries(folder)
    assert len(written) == first["cache_writes"] == first["compiled"]

    second, _ = upscale("second", env=xdg)
    assert second == {"programs": first["programs"], "cache_hits": first["programs"], "compiled": 0,
                      "cache_writes": 0}
    assert entries(folder) == written
    output = "photo_x4.png"
    assert (tmp_path / "second" / output).read_bytes() == (tmp_path / "first" / output).read_bytes()

    # The flag turns it off, over the variable.
    off, _ = upscale("off", "--compilation_cache=off", env={ENV: str(folder)})
    assert off == {"programs": first["programs"], "cache_hits": 0, "compiled": first["programs"],
                   "cache_writes": 0}
    assert entries(folder) == written

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    unusable, stderr = upscale("unusable", env={ENV: str(blocker / "xla")})
    assert unusable["compiled"] == first["programs"] and unusable["cache_hits"] == 0
    notes = [line for line in stderr.splitlines() if line.startswith("note: no compilation cache: ")]
    assert len(notes) == 1 and str(blocker) in notes[0], stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval.py", "drn_jax.export"])
def test_second_run_compiles_nothing(tmp_path, photo, command):
    """eval.py and drn-export: the same command twice with one cache folder; the second compiles none."""
    if command == "eval.py":
        arguments = [str(REPO / "eval.py"), "--pretrained=x4", f"--datasets=folder:{photo.parent}"]
    else:
        arguments = ["drn_jax.export", "--pretrained=x4", "--format=stablehlo"]
    env = {ENV: str(tmp_path / "cache")}
    first, _ = run_counted(tmp_path, "first", [*arguments, f"--output_dir={tmp_path / 'first'}"], env)
    second, _ = run_counted(tmp_path, "second", [*arguments, f"--output_dir={tmp_path / 'second'}"], env)
    assert first["compiled"] == first["programs"] > 0
    assert second["compiled"] == 0 and second["cache_hits"] == second["programs"] == first["programs"]
