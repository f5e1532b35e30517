"""What the command-line tools share: absl flags with underscores, and errors as one line.

Every entry point (train.py, eval.py, drn-upscale, ``python -m drn_jax.pretrained``) parses its
flags with :func:`parse_flags` and runs inside :func:`user_errors`, the one error printer:
``error: <one line>`` on stderr, exit status 2 for what the user can fix, 1 for a run that
stopped by itself. Set DRN_DEBUG=1 for the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

from drn_jax.errors import USER_ERRORS, RunError, one_line

__all__ = ["define_config_file", "exit_status", "parse_flags", "print_error", "user_errors"]


def print_error(message: str | BaseException) -> None:
    """``error: <one line>`` on stderr."""
    text = one_line(message) if isinstance(message, BaseException) else " ".join(message.split())
    print(f"error: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def user_errors(exit_code: int = 2) -> Iterator[None]:
    """Turns the errors a user can fix into `error: <one line>` on stderr and an exit code.

    `RunError` (e.g. a non-finite loss) exits with status 1, the others with `exit_code`.
    Set DRN_DEBUG=1 to get the traceback instead.
    """
    try:
        yield
    except RunError as err:
        if os.environ.get("DRN_DEBUG"):
            raise
        print_error(err)
        sys.exit(1)
    except USER_ERRORS as err:
        if os.environ.get("DRN_DEBUG"):
            raise
        print_error(err)
        sys.exit(exit_code)


def exit_status(function: Callable[..., int], *args: Any) -> int:
    """``function(*args)``'s status, or, for an error :func:`user_errors` prints, its exit status.

    For console scripts whose ``main`` returns a status instead of exiting (testable in-process).
    """
    try:
        with user_errors():
            return function(*args)
    except SystemExit as stop:
        return int(stop.code)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues | None = None) -> list[str]:
    """absl's flag parsing, with `error: <one line>` and exit status 2 for every bad flag.

    Use as ``app.run(main, flags_parser=cli.parse_flags)``, or with a private `flag_values` in a
    console script. Returns the arguments that are not flags (``argv[0]`` first). absl itself
    prints two lines for a bad value, and a traceback for an override of a config field that
    does not exist (ml_collections raises KeyError/AttributeError while parsing).
    """
    values = flags.FLAGS if flag_values is None else flag_values
    try:
        return values(list(argv))
    except flags.Error as err:
        message = one_line(err)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        message = _unknown_field_message(argv, err)
    print_error(f"{message}; see --helpfull")
    sys.exit(2)


def define_config_file(name: str, default: str, help_string: str, **kwargs):
    """`config_flags.DEFINE_config_file` with a one-line error for an unknown ``--config.<field>``.

    ml_collections looks up ``--<name>.<field>=...`` overrides when the flag is defined (at
    import) and raises KeyError/AttributeError with a traceback for a field the config lacks.
    """
    try:
        return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
    except (AttributeError, KeyError) as err:
        print_error(f"{_unknown_field_message(sys.argv, err)}; see --helpfull")
        sys.exit(2)


def _unknown_field_message(argv: Sequence[str], err: BaseException) -> str:
    # ml_collections' messages look like "'featurez'\nDid you mean "features" instead of ...?"
    text = str(err.args[0]) if err.args else str(err)
    first = re.search(r"[A-Za-z_][A-Za-z0-9_]*", text)  # the key, inside layers of quoting
    name = first.group(0) if first else "?"
    hint = re.search(r'Did you mean "([^"]+)"', text)
    flag = next((arg.split("=", 1)[0] for arg in argv[1:]
                 if arg.startswith("--") and "." in arg.split("=", 1)[0]
                 and name in arg.split("=", 1)[0].split(".")), None)
    where = f"{flag}: " if flag else ""
    suggestion = f" (did you mean {hint.group(1)!r}?)" if hint else ""
    return f"{where}the config has no field {name!r}{suggestion}"
