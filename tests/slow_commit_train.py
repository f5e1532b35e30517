"""train.py with checkpoint commits held open, so a test can kill a run inside one. Test-only.

``DRN_TEST_COMMIT_DELAY="<seconds>"`` or ``"<step>:<seconds>"``: every checkpoint commit (or only
that step's) prints ``test hook: committing checkpoint <path>`` to stderr, then sleeps that long
before orbax's final rename.
"""

import asyncio
import os
import pathlib
import runpy
import sys

from orbax.checkpoint._src.path import atomicity

from drn_jax import checkpointing

REPO = pathlib.Path(__file__).resolve().parents[1]
STEP, _, SECONDS = os.environ["DRN_TEST_COMMIT_DELAY"].rpartition(":")


class SlowCommit(atomicity.AtomicRenameTemporaryPath):
    async def finalize(self, *args, **kwargs):
        if not STEP or self.get_final().name == STEP:
            print(f"test hook: committing checkpoint {self.get()}", file=sys.stderr, flush=True)
            await asyncio.sleep(float(SECONDS))
        return await super().finalize(*args, **kwargs)


_init = checkpointing.Checkpointer.__init__


def _slow_init(self, *args, **kwargs):
    kwargs.setdefault("temporary_path_class", SlowCommit)
    _init(self, *args, **kwargs)


checkpointing.Checkpointer.__init__ = _slow_init
sys.argv[0] = str(REPO / "train.py")
runpy.run_path(str(REPO / "train.py"), run_name="__main__")
