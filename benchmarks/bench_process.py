"""The child processes of ``bench.py``: their environment, how they report, how they are read.

A measurement runs in a fresh process and prints one JSON object on its last stdout line
(:func:`run_json`). A warm *server* (:func:`serve`, :class:`Server`) takes single steps on
request instead, so that two of them can be stepped in turn: it prints ``ready`` once warm,
answers each ``step`` line with the seconds that step took, and on ``quit`` prints its peak
RSS as JSON and exits.

Standard library only: the PyTorch peer's side (``bench_peer.py``) imports it in a venv
that has torch and nothing of drn-jax's.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).resolve().with_name("bench_worker.py")  # the JAX side
PEER_SERVER = pathlib.Path(__file__).resolve().with_name("bench_peer.py")  # the PyTorch side
TORCH_PEER = REPO.parent / "shared" / "peers" / "torch_drn.py"  # never a dependency

# glibc malloc settings that keep freed memory in the process: XLA allocates each step's
# temporaries (hundreds of MB) afresh, which glibc otherwise maps and unmaps every step, so the
# kernel zeroes and faults them in again (~0.3 s of system time per x4 step). One arena, no
# mmap and no trimming keep them in the heap. ``--malloc default`` measures without.
TUNED_MALLOC = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def child_env(malloc: str) -> dict[str, str]:
    """This process's environment, with `TUNED_MALLOC` added for ``malloc="tuned"``."""
    env = dict(os.environ)
    if malloc == "tuned":
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), TUNED_MALLOC]))
    return env


def jax_cmd(kind: str, *extra: str) -> list[str]:
    """The command of a JAX measurement (``bench_worker.py KIND ...``) in this Python."""
    return [sys.executable, str(WORKER), kind, *extra]


def torch_cmd(python: str, mode: str, opts: list[str]) -> list[str]:
    """The PyTorch peer's own ``bench`` command (2 threads) in the Python of a torch venv."""
    return [python, str(TORCH_PEER), "bench", "--mode", mode, *opts, "--threads", "2"]


def _last_json(cmd: list[str], returncode: int, out: str, err_tail: str) -> dict:
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        raise RuntimeError(f"failed ({returncode}): {' '.join(cmd)}\n{err_tail}")
    return json.loads(lines[-1])


def run_json(cmd: list[str], env: Mapping[str, str] | None = None,
             timeout: float | None = None) -> tuple[dict, float]:
    """Runs `cmd` in the repository; (its last stdout line as JSON, the ``peak_rss_mb`` it reports).

    Raises RuntimeError (with the end of its stderr) when it fails, prints no JSON or times out.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env=env, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"timed out: {' '.join(cmd)}") from None
    result = _last_json(cmd, proc.returncode, out, "\n".join(err.strip().splitlines()[-15:]))
    return result, result.get("peak_rss_mb", float("nan"))


def run_json_wait4(cmd: list[str], env: Mapping[str, str] | None = None) -> tuple[dict, float]:
    """Like :func:`run_json` for programs that do not report their own RSS (the PyTorch peer):
    the peak RSS comes from the kernel's accounting of the child (``wait4``). No timeout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env,
                            text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return _last_json(cmd, proc.returncode, out, err[-2000:]), usage.ru_maxrss / 1024


def serve(step_fn: Callable[[], None]) -> None:
    """The server side of the protocol: two warm-up steps, ``ready``, then one step per request."""
    step_fn()  # warm-up
    step_fn()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        step_fn()
        print(f"{time.perf_counter() - start:.6f}", flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


class Server:
    """A warm benchmark server (see :func:`serve`): one step per `step()` call, its seconds back."""

    def __init__(self, name: str, cmd: list[str], env: Mapping[str, str]):
        self.name = name
        self.peak_rss_mb = float("nan")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        while True:  # compiles and warms up before anything else starts
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"lockstep: the {name} server exited before it was ready: {' '.join(cmd)}")
            if line.strip() == "ready":
                return

    def step(self) -> float:
        """Seconds of one step of the server."""
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        """Stops the server and reads its peak RSS into `peak_rss_mb`."""
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            for line in self.proc.stdout:
                if line.startswith("{"):
                    self.peak_rss_mb = json.loads(line)["peak_rss_mb"]
        except (OSError, ValueError):
            pass
        self.proc.wait(timeout=60)


def jax_server(name: str, argv: list[str], env: Mapping[str, str]) -> Server:
    """A warm JAX server (``bench_worker.py serve_jax ARGV``)."""
    return Server(name, [sys.executable, str(WORKER), "serve_jax", *argv], env)


def torch_server(python: str, argv: list[str], env: Mapping[str, str]) -> Server:
    """A warm PyTorch server (``bench_peer.py ARGV``) in the Python of a torch venv."""
    return Server("torch", [python, str(PEER_SERVER), *argv], env)
