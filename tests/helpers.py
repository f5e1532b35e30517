"""Plain functions the tests share (tests/conftest.py keeps the fixtures).

* The tiny run: `TINY`, configs/default.py made small enough to train a few steps in seconds,
  as a config in this process (`tiny_config`) and as train.py's flags (`tiny_flags`), so that a
  subprocess and an in-process reference train the same run.
* Subprocesses of the package: `subprocess_env`; `run_python`, `run_train` and `run_eval`, which
  wait for the end; `Run`, a train.py whose lines are read as they come; `error_lines`.
* Image files: `photo` and `write_photos` (colour ramps plus noise, like photographs) and
  `write_random_images` (uniform noise, any channel count).
* `tiny_model`: a small DRN with random weights, drawn without ``model.init``.

Importing this module imports JAX: conftest.py imports it only after setting JAX's environment.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import queue
import re
import subprocess
import sys
import threading
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from drn_jax import config as config_lib
from drn_jax import models

REPO = pathlib.Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- the tiny run

TINY = {
    "model.features": 8, "model.modules_per_block": 1, "data.hr_patch_size": 32,
    "batch_size": 8, "learning_rate": 1e-3, "log_every_steps": 1, "checkpoint_every_steps": 3,
    "eval_every_steps": 1000, "data.val_limit": 1, "data.shuffle_buffer": 16,
}
"""configs/default.py's overrides for the tiny run (dotted keys), as `tiny_config` applies them
and as a subprocess gets them (``--config.<key>=<value>``, `tiny_flags`)."""


def load_script(path: str | os.PathLike, name: str | None = None) -> types.ModuleType:
    """The Python file `path` (a script, benchmark or config outside the package) imported as the
    module `name` (default: the file's stem), which is also put in ``sys.modules`` (dataclasses
    look their module up there)."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def default_config(**overrides: Any) -> ml_collections.ConfigDict:
    """configs/default.py's config (what train.py trains without --config) with `overrides`
    (dotted keys, e.g. ``**{"data.val_limit": 2}``), as train.py builds it."""
    config = load_script(REPO / "configs" / "default.py", "drn_default_config").get_config()
    for key, value in overrides.items():
        config_lib.override(config, key, value)
    return config


def tiny_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The tiny run's config: configs/default.py with `TINY`, then `overrides` (which win)."""
    return default_config(**{**TINY, **overrides})


def config_flags(overrides: Mapping[str, Any]) -> list[str]:
    """train.py's ``--config.<key>=<value>`` flags for `overrides` (dotted keys)."""
    return [f"--config.{key}={value}" for key, value in overrides.items()]


def tiny_flags(**overrides: Any) -> list[str]:
    """`tiny_config`'s overrides as train.py flags (over configs/default.py, train.py's default)."""
    return config_flags({**TINY, **overrides})


def data_overrides(folder: str | os.PathLike) -> dict[str, str]:
    """Training and validation on the images of `folder`."""
    return {"data.train": f"folder:{folder}", "data.val": f"folder:{folder}"}


# ---------------------------------------------------------------------------- subprocesses

def subprocess_env(devices: int = 8, **extra: str) -> dict[str, str]:
    """The environment of a subprocess of the package: JAX on `devices` emulated CPU devices, the
    test session's persistent compilation cache (conftest.py sets JAX_COMPILATION_CACHE_DIR) for
    every program, TensorFlow's C++ logs quiet, DRN_DEBUG unset; then `extra`."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("DRN_DEBUG", None)
    env.update(extra)
    return env


def run_python(*args: str | os.PathLike, env: Mapping[str, str] | None = None,
               cwd: str | os.PathLike | None = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` with this interpreter, run to its end; stdout and stderr captured as text.
    `env` defaults to `subprocess_env()`."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=subprocess_env() if env is None else dict(env), timeout=timeout)


def run_train(*flags: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python train.py FLAGS`` (`run_python`'s keyword arguments)."""
    return run_python(REPO / "train.py", *flags, **kwargs)


def run_eval(*flags: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python eval.py FLAGS`` (`run_python`'s keyword arguments)."""
    return run_python(REPO / "eval.py", *flags, **kwargs)


class Run:
    """A train.py subprocess (or `script`'s) whose stdout and stderr lines are read as they come."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike = REPO,
                 script: str | os.PathLike = REPO / "train.py"):
        self.process = subprocess.Popen([sys.executable, str(script), *args], cwd=cwd, env=dict(env),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, store), daemon=True)
                         for stream, store in ((self.process.stdout, self.stdout),
                                               (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, store):
        for line in stream:
            store.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 240) -> str:
        """The first line (either stream) matching `pattern`; fails if the run ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            if re.search(pattern, line):
                return line
        self.process.kill()
        self.finish()
        raise AssertionError(f"no line matching {pattern!r}; rc={self.process.returncode}\n"
                             f"{self.out[-3000:]}\n{self.err[-3000:]}")

    def kill_9(self) -> None:
        self.process.kill()  # SIGKILL: no handler, no cleanup
        self.finish()

    def finish(self, timeout: float = 300) -> int:
        """Waits for the end (at most `timeout` seconds); the exit status."""
        self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return self.process.returncode

    @property
    def out(self) -> str:
        return "".join(self.stdout)

    @property
    def err(self) -> str:
        return "".join(self.stderr)


def error_lines(stderr: str) -> list[str]:
    """The lines of `stderr` that report an error (``error: ...``)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------- image files

def photo(rng: np.random.Generator, height: int, width: int, index: int) -> np.ndarray:
    """A photograph-like uint8 RGB image: colour ramps (shifted by `index`) plus uniform noise
    in [0, 40) from `rng`."""
    rows, cols = np.mgrid[0:height, 0:width]
    base = np.stack([rows * 4 + index * 10, cols * 3 + 20, (rows + cols) * 2], -1)
    return np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)


def write_photos(folder: str | os.PathLike, count: int = 6, *, seed: int = 0) -> pathlib.Path:
    """`count` photos (`photo`, 48x40) saved as ``img<i>.png`` in `folder` (created), their noise
    from one generator seeded with `seed`; returns the folder."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(photo(rng, 40, 48, index)).save(folder / f"img{index}.png")
    return folder


_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def write_random_images(folder: str | os.PathLike, shapes, *, seed: int = 0, names=None,
                        suffix: str = ".png") -> dict[str, np.ndarray]:
    """Uniform random uint8 images saved in ``folder`` (created): ``{name: pixels}``.

    ``shapes``: one ``(H, W, C)`` per image (C 1: greyscale "L" file, 3: RGB, 4: RGBA), or
    ``(count, (H, W, C))`` for ``count`` images of one shape. ``names`` default to ``img0``,
    ``img1``, ...; the files are ``<name><suffix>``. One generator seeded with ``seed`` draws
    them in order.
    """
    if len(shapes) == 2 and isinstance(shapes[0], int):
        shapes = [tuple(shapes[1])] * shapes[0]
    names = list(names) if names is not None else [f"img{index}" for index in range(len(shapes))]
    assert len(names) == len(shapes), (names, shapes)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = {}
    for name, shape in zip(names, shapes):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if shape[-1] == 1 else pixels, _MODES[shape[-1]]).save(
            folder / f"{name}{suffix}")
        images[name] = pixels
    return images


# ---------------------------------------------------------------------------- small DRNs

@functools.lru_cache(maxsize=None)
def tiny_model(scale: int = 4, image_residual: bool = False):
    """A small DRN (F=8, one module per block) with random variables drawn in NumPy.

    Not ``model.init``: jax.random's threefry takes seconds to compile on CPU, and any random
    weights do here. Kernels follow PyTorch's default bound; biases are non-zero so that zero
    padding and ReLUs act as in a trained network.
    """
    model = models.DRN(scale, features=8, modules_per_block=1, image_residual=image_residual)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
    rng = np.random.default_rng(0)

    def draw(leaf):
        if len(leaf.shape) == 4:  # (3, 3, in, out)
            bound = 1.0 / np.sqrt(np.prod(leaf.shape[:3]))
            return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return model, jax.tree.map(draw, shapes)
