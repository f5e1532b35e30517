"""What the command-line tools share: user errors as one line, never a traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from drn_jax.config import ConfigError
from drn_jax.image_io import ImageReadError

# OSError covers missing files, unwritable folders and a full disk.
USER_ERRORS = (ConfigError, ImageReadError, OSError, ValueError)


@contextlib.contextmanager
def user_errors(exit_code: int = 2) -> Iterator[None]:
    """Turns the errors a user can fix into `error: <one line>` on stderr and an exit code.

    Set DRN_DEBUG=1 to get the traceback instead.
    """
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("DRN_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(exit_code)
