"""Runs a module or script as ``__main__`` (``python tests/count_compiles.py MODULE|SCRIPT.py ARGS...``)
and, at exit, writes how many programs it compiled and how many it loaded from the persistent cache. Test-only.

The counts go as JSON to the file named by ``DRN_TEST_COMPILE_COUNTS``: ``programs`` (every
program JAX's pjit path asked the backend for, whether compiled or loaded), ``cache_hits``
(loaded from the persistent compilation cache), ``compiled`` (their difference) and
``cache_writes``. They come from JAX's own monitoring events, which it records whether the
cache is on or off.
"""

import atexit
import collections
import json
import os
import pathlib
import runpy
import sys

import jax.monitoring

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # once per program, hit or not
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_CACHE_WRITE = "/jax/compilation_cache/cache_misses"  # recorded when an entry is written

counts: collections.Counter = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kwargs: counts.update([event]))
jax.monitoring.register_event_duration_secs_listener(lambda event, seconds, **kwargs: counts.update([event]))


@atexit.register
def _write() -> None:
    result = {"programs": counts[_BACKEND_COMPILE], "cache_hits": counts[_CACHE_HIT],
              "compiled": counts[_BACKEND_COMPILE] - counts[_CACHE_HIT],
              "cache_writes": counts[_CACHE_WRITE]}
    pathlib.Path(os.environ["DRN_TEST_COMPILE_COUNTS"]).write_text(json.dumps(result))


sys.argv = sys.argv[1:]
if sys.argv[0].endswith(".py"):
    sys.path[0] = str(pathlib.Path(sys.argv[0]).resolve().parent)  # as `python SCRIPT.py` has it
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
