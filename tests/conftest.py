"""Test setup: 8 emulated CPU devices, TensorFlow kept off accelerators, data paths."""

import os

# Must happen before jax is imported anywhere: emulate an 8-device host so the
# data-parallel code paths run for real on CPU.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# The shared data folder sits beside the repository (../shared/data); CI has it.
DATA_DIR = pathlib.Path(os.environ.get("DRN_DATA_DIR", REPO.parent / "shared" / "data"))
BENCHMARK_DIR = DATA_DIR / "benchmark"


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
