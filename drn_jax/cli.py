"""What the command-line tools share: user errors as one line, never a traceback."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence

from drn_jax.config import ConfigError
from drn_jax.image_io import ImageReadError

# OSError covers missing files, unwritable folders and a full disk.
USER_ERRORS = (ConfigError, ImageReadError, OSError, ValueError)


class RunError(RuntimeError):
    """A run stopped by something it cannot fix itself (a non-finite loss); one-line message."""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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
        print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(1)
    except USER_ERRORS as err:
        if os.environ.get("DRN_DEBUG"):
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(exit_code)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with `error: <one line>` and exit status 2 for every bad flag.

    Use as ``app.run(main, flags_parser=cli.parse_flags)``. absl itself prints two lines for
    a bad value, and a traceback for an override of a config field that does not exist
    (ml_collections raises KeyError/AttributeError while parsing).
    """
    from absl import flags

    try:
        return flags.FLAGS(list(argv))
    except flags.Error as err:
        message = _one_line(err)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        message = _unknown_field_message(argv, err)
    print(f"error: {message}; see --helpfull", file=sys.stderr, flush=True)
    sys.exit(2)


def define_config_file(name: str, default: str, help_string: str, **kwargs):
    """`config_flags.DEFINE_config_file` with a one-line error for an unknown ``--config.<field>``.

    ml_collections looks up ``--<name>.<field>=...`` overrides when the flag is defined (at
    import) and raises KeyError/AttributeError with a traceback for a field the config lacks.
    """
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
    except (AttributeError, KeyError) as err:
        print(f"error: {_unknown_field_message(sys.argv, err)}; see --helpfull", file=sys.stderr, flush=True)
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
