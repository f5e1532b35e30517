"""This machine in one line, for model cards and benchmark reports."""

from __future__ import annotations

import os
import pathlib
import platform

import jax

__all__ = ["cpu_description", "machine_description"]


def cpu_description() -> str:
    """This machine's CPU model and core count, e.g. ``"Intel(R) Xeon(R) Processor, 2 cores"``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def machine_description() -> str:
    """CPU model and cores (or the accelerators), JAX backend and version."""
    backend = jax.default_backend()
    devices = jax.devices()
    where = cpu_description() if backend == "cpu" else f"{len(devices)} x {devices[0].device_kind}"
    return f"{where}; jax {jax.__version__} ({backend})"
