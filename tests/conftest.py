"""Test setup: 8 emulated CPU devices, TensorFlow kept off accelerators, a shared JAX
compilation cache, data paths, and the fixtures (plain helpers are in helpers.py)."""

import os
import shutil
import tempfile

# Must happen before jax is imported anywhere: emulate an 8-device host so the
# data-parallel code paths run for real on CPU.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One persistent compilation cache for the whole test session: this process, the pytest-xdist
# workers (started from this environment) and every train.py / eval.py subprocess they start.
# On CPU, jax.random's threefry alone takes seconds to compile per parameter shape, and each
# process would compile the same programs again. A cached executable is the compiled program
# itself (its key hashes the HLO, the compile options, the device assignment and the XLA flags),
# so results are unchanged. The first process to load this file creates the folder and
# removes it at the end (pytest_unconfigure).
_CACHE_ENV = "DRN_TEST_JAX_CACHE_DIR"
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="drn-jax-test-jit-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ[_CACHE_ENV])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The entry points (train.py, eval.py, drn-upscale, drn-export) turn on their own cache, in
# ~/.cache/drn-jax/xla by default (drn_jax.cli.use_compilation_cache): the ones tests start use
# this session's folder instead.
os.environ["DRN_JAX_COMPILATION_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]

import pathlib

import pytest

from drn_jax import recipes
from helpers import REPO, write_random_images  # REPO: tests/test_tpu_aot.py imports it from here

# The shared data folder ($DRN_DATA_DIR, else ../shared/data beside the repository); CI has it.
DATA_DIR = recipes.shared_data_dir()
BENCHMARK_DIR = DATA_DIR / "benchmark"


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)


@pytest.fixture(scope="session")
def benchmark_dir() -> pathlib.Path:
    if not (BENCHMARK_DIR / "Set5" / "HR").is_dir():
        pytest.skip(f"benchmark images not found under {BENCHMARK_DIR} (set DRN_DATA_DIR)")
    return BENCHMARK_DIR


@pytest.fixture(scope="session")
def train_dir() -> pathlib.Path:
    path = DATA_DIR / "train"
    if not path.is_dir():
        pytest.skip(f"training images not found under {path} (set DRN_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def random_images():
    """helpers.write_random_images, for tests and fixtures of any scope."""
    return write_random_images
