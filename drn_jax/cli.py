"""What the command-line tools share: absl flags with underscores, and errors as one line.

Every entry point parses its flags with :func:`parse_flags`, runs inside :func:`user_errors`
(``error: <one line>``, exit 2 for what the user can fix) and, where it compiles, turns on the
persistent compilation cache (:func:`use_compilation_cache`); library code never does.

The one vocabulary of every entry point, script and benchmark:

* ``--output_dir`` (a folder written into) and ``--output`` (one file);
* ``--data_dir`` (benchmark sets, ``<data_dir>/<Name>/HR/``), ``--train_dir`` (training image
  folders), ``--tfds_data_dir`` (a TFDS folder), defaulting to `drn_jax.recipes.shared_data_dir`;
* ``--pretrained`` / ``--checkpoint`` / ``--workdir`` (the model, `define_model_flags`);
* ``--config=FILE[:STEPS]`` and ``--config.<field>=VALUE``; ``--config_name`` (a benchmark's
  built-in config); ``--tile`` / ``--tile_overlap`` (`define_tile_flags`); ``--quick``;
  ``--compilation_cache``.

How it works: docs/internals.md#the-command-line-tools.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
from absl import flags
from ml_collections import config_flags

from drn_jax import loading
from drn_jax.errors import USER_ERRORS, RunError, one_line
from drn_jax.rundir import DEFAULT_WORKDIR

__all__ = ["COMPILATION_CACHE_ENV", "COMPILATION_CACHE_FLAG", "DEFAULT_TILE", "chosen_model",
           "compilation_cache_dir", "console_command", "define_compilation_cache_flag",
           "define_config_file", "define_model_flags", "define_tile_flags", "exit_status",
           "parse_flags", "print_error", "use_compilation_cache", "user_errors"]

COMPILATION_CACHE_FLAG = "compilation_cache"
COMPILATION_CACHE_ENV = "DRN_JAX_COMPILATION_CACHE"
_CACHE_OFF = ("", "off")


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


_HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def _flag_args(argv: Sequence[str]) -> list[str]:
    """The arguments before ``--`` (after it, everything is a positional argument)."""
    rest = list(argv[1:])
    return rest[:rest.index("--")] if "--" in rest else rest


def _own_flags_help(values: flags.FlagValues) -> str:
    """The help of the main module's flags and of those the package defines for it."""
    main = values.main_module_help().strip()
    ours = [values.module_help(name).strip() for name in sorted(values.flags_by_module_dict())
            if name.split(".")[0] == "drn_jax"]
    return "\n\n".join(part for part in [main, *ours] if part)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues | None = None, *,
                description: str | None = None) -> list[str]:
    """absl's flag parsing, with `error: <one line>` and exit status 2 for every bad flag.

    Use as ``app.run(main, flags_parser=cli.parse_flags)``, or with a private `flag_values` in a
    console script. Returns the arguments that are not flags (``argv[0]`` first). absl itself
    prints two lines for a bad value, and a traceback for an override of a config field that
    does not exist (ml_collections raises KeyError/AttributeError while parsing).

    ``--help`` (``-h``, ``--helpfull``, ...) prints `description` (default for the global flags:
    the main module's docstring), a usage line and the flags (the main module's, or with
    ``--helpfull`` or private flags all of them), and exits with status 0: absl.app's own help
    flags exit with 1, and private flags have none.
    """
    values = flags.FLAGS if flag_values is None else flag_values
    asked = [arg for arg in _flag_args(argv) if arg in _HELP_ARGS]
    if asked:
        # absl.app's help flags exit with status 1, and private flags (console scripts) have none.
        if values is flags.FLAGS:
            description = description or (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
        full = values is not flags.FLAGS or "--helpfull" in asked
        text = (values.get_help() if full else _own_flags_help(values)).strip()
        head = f"{description.strip()}\n\n" if description else ""
        print(f"{head}usage: {pathlib.Path(argv[0]).name} [flags] [arguments]\n\n{text}")
        sys.exit(0)
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


def define_compilation_cache_flag(flag_values: flags.FlagValues | None = None) -> flags.FlagHolder:
    """Defines ``--compilation_cache`` (in `flag_values`, default the global flags); its value is
    None when the flag is not given. Pass it to :func:`use_compilation_cache`."""
    return flags.DEFINE_string(
        COMPILATION_CACHE_FLAG, None,
        f"folder of JAX's persistent compilation cache, 'off' for none (default: ${COMPILATION_CACHE_ENV}, "
        "else JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/drn-jax/xla or ~/.cache/drn-jax/xla)",
        flag_values=flag_values if flag_values is not None else flags.FLAGS)


def compilation_cache_dir(flag: str | None, environ: Mapping[str, str] | None = None,
                          jax_dir: str | None = None) -> pathlib.Path | None:
    """Where the compilation cache goes, or None for no cache (the order is the module docstring's).

    `flag`: ``--compilation_cache``'s value (None: not given). `environ` defaults to
    ``os.environ``; `jax_dir` is JAX's ``jax_compilation_cache_dir`` setting (None: unset).
    """
    environ = os.environ if environ is None else environ
    if flag is not None:
        chosen = flag
    elif COMPILATION_CACHE_ENV in environ:
        chosen = environ[COMPILATION_CACHE_ENV]
    elif jax_dir:
        return pathlib.Path(jax_dir)
    else:
        # XDG: a relative $XDG_CACHE_HOME is invalid and is ignored.
        base = environ.get("XDG_CACHE_HOME", "")
        root = pathlib.Path(base) if os.path.isabs(base) else pathlib.Path.home() / ".cache"
        return root / "drn-jax" / "xla"
    chosen = chosen.strip()
    return None if chosen.lower() in _CACHE_OFF else pathlib.Path(chosen).expanduser()


def use_compilation_cache(flag: str | None) -> pathlib.Path | None:
    """Turns JAX's persistent compilation cache on in :func:`compilation_cache_dir`'s folder, or off.

    For entry points only, before anything compiles: it changes process-wide JAX config. Every
    program is cached, however small or quick to compile (JAX's defaults skip those under 1 s),
    so that a second run compiles nothing. A folder that cannot be created or written gets a
    one-line note, and the run goes on without a cache. Returns the folder, or None.
    """
    path = compilation_cache_dir(flag, jax_dir=jax.config.jax_compilation_cache_dir)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(f"{path} is not writable")
        except OSError as err:
            print(f"note: no compilation cache: {one_line(err)}; set --{COMPILATION_CACHE_FLAG}=PATH "
                  f"or {COMPILATION_CACHE_ENV}=off", file=sys.stderr, flush=True)
            path = None
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def define_model_flags(flag_values: flags.FlagValues | None = None, *, what: str = "used"
                       ) -> Callable[[], loading.ModelSource]:
    """Defines ``--pretrained``, ``--checkpoint`` and ``--workdir``, the one way every command
    names a trained model; returns a function giving the `loading.ModelSource` they name
    (`loading.model_source`: at most one of them; none is the default workdir). `what` ends
    the flags' help, e.g. ``"exported"``."""
    values = flag_values if flag_values is not None else flags.FLAGS
    pretrained = flags.DEFINE_string(
        "pretrained", None, f"a pretrained model shipped with the package (e.g. x4; `python -m "
        f"drn_jax.pretrained list`), {what} instead of a training run", flag_values=values)
    checkpoint = flags.DEFINE_string(
        "checkpoint", None, f"a checkpoint step folder <workdir>/checkpoints/<step>, {what}",
        flag_values=values)
    workdir = flags.DEFINE_string(
        "workdir", None, f"a training workdir whose latest checkpoint is {what} (default: "
        f"{DEFAULT_WORKDIR}, what train.py writes, when no other source is given)", flag_values=values)
    del pretrained, checkpoint, workdir  # read back by chosen_model
    return lambda: chosen_model(values)


def chosen_model(flag_values: flags.FlagValues | None = None) -> loading.ModelSource:
    """The `loading.ModelSource` that the flags of `define_model_flags` name."""
    values = flag_values if flag_values is not None else flags.FLAGS
    return loading.model_source(pretrained=values["pretrained"].value, checkpoint=values["checkpoint"].value,
                                workdir=values["workdir"].value)


def console_command(name: str, define_flags: Callable[[flags.FlagValues], None],
                    body: Callable[[Sequence[str], flags.FlagValues], int], argv: Sequence[str] | None = None,
                    *, entry_point: bool = False) -> int:
    """Runs a console script's command line in private flags; returns its exit status.

    `define_flags` defines the flags in a fresh `flags.FlagValues` (with
    `define_compilation_cache_flag` among them when the command compiles), and `body(rest,
    values)` runs with the arguments that are not flags. `argv` defaults to ``sys.argv[1:]``.
    With `entry_point` (the console script, not an in-process caller) the process is set up
    first: JAX's compilation cache (`use_compilation_cache`), when the command has its flag.
    """
    values = flags.FlagValues()
    define_flags(values)
    module = sys.modules.get(getattr(body, "__module__", ""))
    doc = (getattr(module, "__doc__", None) or "").strip()
    rest = parse_flags([name, *(sys.argv[1:] if argv is None else argv)], values,
                       description=doc.split("\n\n")[0] if doc else None)[1:]
    if entry_point and COMPILATION_CACHE_FLAG in values:
        use_compilation_cache(values[COMPILATION_CACHE_FLAG].value)  # process-wide JAX config
    return exit_status(body, rest, values)


DEFAULT_TILE = 512
"""The tile budget, LR pixels per side: a 481×321 photo runs as one tile (336×496), which the CPU
computes faster than the three tiles of a 256 budget, at a higher peak memory (the figures:
docs/performance.md, "drn-upscale end to end")."""


def define_tile_flags(flag_values: flags.FlagValues | None = None) -> tuple[flags.FlagHolder, flags.FlagHolder]:
    """Defines ``--tile`` and ``--tile_overlap`` (see the module docstring); returns their holders.
    Tiling is exact (tests/test_inference.py): it bounds memory and changes no output."""
    values = flag_values if flag_values is not None else flags.FLAGS
    tile = flags.DEFINE_integer(
        "tile", DEFAULT_TILE, "tile budget: tiles of at most TILE² LR pixels, fitted to each image; "
        "0 runs whole images", lower_bound=0, flag_values=values)
    overlap = flags.DEFINE_integer(
        "tile_overlap", None, "LR pixels of context around each tile (default: the network's "
        "receptive-field radius, which makes tiling exact)", lower_bound=0, flag_values=values)
    return tile, overlap

