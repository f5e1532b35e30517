"""Orbax's background noise about a failed checkpoint write, dropped: for entry points only.

When a write fails (full disk, read-only folder), `drn_jax.checkpointing.Checkpointer` raises
one line; orbax meanwhile logs the same failure with tracebacks from its threads and asyncio
tasks, and its closed event loop raises more at interpreter teardown. `install` drops exactly
those (DRN_DEBUG=1 keeps them). It installs logging filters and ``sys.unraisablehook`` /
``threading.excepthook`` wrappers, which is process-wide state: only entry points import this
module (train.py installs it for the whole process, teardown included).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator

from drn_jax.checkpointing import WRITE_FAILED, is_storage_error

__all__ = ["install", "quiet"]

# Set once orbax has failed to write: its teardown then prints noise the one-line error explains.
_storage_failed = WRITE_FAILED


def _through_orbax(trace) -> bool:
    return trace is not None and any("orbax" in frame.filename for frame in traceback.extract_tb(trace))


def _from_orbax(record: logging.LogRecord) -> bool:
    if "orbax" in record.pathname or "orbax" in record.getMessage():
        return True
    return _through_orbax(record.exc_info[2] if record.exc_info else None)


def _is_teardown_noise(error: BaseException | None) -> bool:
    text = str(error)
    return isinstance(error, RuntimeError) and ("Event loop is closed" in text or "interpreter shutdown" in text)


class _QuietStorageErrors(logging.Filter):
    """Drops orbax's background-thread tracebacks for write errors.

    Orbax logs a failed asynchronous write (with its traceback) from several threads and
    asyncio tasks before the error reaches `Checkpointer.wait`, which reports it as one
    line. Set DRN_DEBUG=1 to see them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info or os.environ.get("DRN_DEBUG"):
            return True
        error = record.exc_info[1]
        if error is None or not _from_orbax(record):
            return True
        if is_storage_error(error):
            _storage_failed.set()
            return False
        return not (_storage_failed.is_set() and _is_teardown_noise(error))


_QUIET = _QuietStorageErrors()


def _unraisablehook(previous, unraisable) -> None:
    # After a failed write, tensorstore's callbacks into orbax's closed event loop raise
    # "Event loop is closed" with no object to blame, possibly before the failure is logged;
    # Python would print each traceback.
    error = unraisable.exc_value
    closed_loop = (unraisable.object is None and isinstance(error, RuntimeError)
                   and "Event loop is closed" in str(error))
    if not os.environ.get("DRN_DEBUG") and (closed_loop or (_storage_failed.is_set() and _is_teardown_noise(error))):
        return
    previous(unraisable)


def _threading_excepthook(previous, args) -> None:
    # An orbax worker thread that dies of the write error already reported in one line.
    if (not os.environ.get("DRN_DEBUG") and _through_orbax(args.exc_traceback)
            and (is_storage_error(args.exc_value) or _is_teardown_noise(args.exc_value))):
        _storage_failed.set()
        return
    previous(args)


def install() -> Callable[[], None]:
    """Drops orbax's background noise about a failed write until the returned function is called.

    The failure itself still surfaces as the one-line `OSError` of `Checkpointer`; only the
    tracebacks orbax logs from its threads and asyncio tasks, and the errors its closed event
    loop raises at interpreter teardown, are dropped (DRN_DEBUG=1 keeps them). It installs logging
    filters and ``sys.unraisablehook`` / ``threading.excepthook`` wrappers: for entry points
    (train.py installs it for the whole process, teardown included), not for library code.
    """
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio", "concurrent.futures")]
    added = [target for target in loggers if _QUIET not in target.filters]
    for target in added:
        target.addFilter(_QUIET)
    previous_unraisable, previous_thread = sys.unraisablehook, threading.excepthook
    sys.unraisablehook = lambda unraisable: _unraisablehook(previous_unraisable, unraisable)
    threading.excepthook = lambda args: _threading_excepthook(previous_thread, args)

    def uninstall() -> None:
        sys.unraisablehook, threading.excepthook = previous_unraisable, previous_thread
        for target in added:
            target.removeFilter(_QUIET)
        _storage_failed.clear()

    return uninstall


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """`install` for the duration of a block."""
    uninstall = install()
    try:
        yield
    finally:
        uninstall()
