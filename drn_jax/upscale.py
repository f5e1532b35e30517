"""Upscales image files with a trained DRN: ``drn-upscale INPUT... --output_dir DIR``.

Files and folders (searched recursively for PNG, JPEG and BMP) go in; ``<stem>_x<scale>.png``
files come out. Every image runs through :class:`drn_jax.inference.Upscaler` in fixed-shape tiles
(``--tile``, 256 LR pixels by default), so memory stays bounded and the network compiles once
for all images larger than a tile; the tile overlap defaults to the network's receptive-field
radius, which makes the tiled result equal the untiled one. The network comes from a training
``--workdir`` (or ``--checkpoint``), or from ``--pretrained NAME``, a model shipped with the
package (:mod:`drn_jax.pretrained`).

Inputs are read by :func:`drn_jax.image_io.read_image`: convertible files (greyscale, RGBA,
16-bit, palette, CMYK) are converted with a one-line warning and upscaled; unusable ones
(unreadable, truncated, over ``--max_pixels``) are reported in one line naming the file and
skipped, and the batch goes on. Exit status: 0 if every image was written, 1 if any failed,
2 for usage errors (bad flags, no checkpoint, no inputs).
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import time
from collections.abc import Sequence

from absl import flags

from drn_jax import cli, image_io, inference, loading
from drn_jax.errors import ImageReadError, one_line
from drn_jax.rundir import DEFAULT_WORKDIR

DEFAULT_TILE = 256
USAGE = "drn-upscale INPUT... --output_dir=DIR [--pretrained=NAME | --workdir=RUN | --checkpoint=STEP_DIR]"


def define_flags(values: flags.FlagValues) -> None:
    """drn-upscale's flags, in `values` (a private `flags.FlagValues`: no global flags)."""
    flags.DEFINE_string("output_dir", None, "folder for the upscaled PNGs", flag_values=values)
    flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "training workdir whose latest checkpoint is used",
                        flag_values=values)
    flags.DEFINE_string("checkpoint", None, "a checkpoint step folder <workdir>/checkpoints/<step>",
                        flag_values=values)
    flags.DEFINE_string("pretrained", None, "a pretrained model shipped with the package (e.g. x4), used "
                        "instead of --workdir; `python -m drn_jax.pretrained list` shows them", flag_values=values)
    flags.DEFINE_enum("method", "model", ["model", "bicubic"],
                      "the network, or MATLAB bicubic as a baseline", flag_values=values)
    flags.DEFINE_integer("scale", None, "upscaling factor (bicubic only; a model has its own)", flag_values=values)
    flags.DEFINE_bool("self_ensemble", False, "average the 8 flips/rotations (8x slower, slightly better)",
                      flag_values=values)
    flags.DEFINE_integer("tile", DEFAULT_TILE, "tile side in LR pixels; 0 runs whole images", lower_bound=0,
                         flag_values=values)
    flags.DEFINE_integer("tile_overlap", None, "LR pixels of context around each tile (default: the "
                         "receptive-field radius)", lower_bound=0, flag_values=values)
    flags.DEFINE_integer("max_pixels", image_io.DEFAULT_MAX_PIXELS,
                         "refuse images whose header declares more pixels", lower_bound=1, flag_values=values)
    flags.DEFINE_bool("no_progress", False, "no progress bar", flag_values=values)


class _TqdmHandler(logging.Handler):
    """Prints log records as ``warning: <message>`` lines without breaking the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        level = "warning" if record.levelno >= logging.WARNING else "note"
        tqdm.write(f"{level}: {record.getMessage()}", file=sys.stderr)


def _output_path(output_dir: pathlib.Path, path: pathlib.Path, scale: int, used: set[pathlib.Path]
                 ) -> pathlib.Path:
    """``<stem>_x<scale>.png``; a stem seen before in this run (a.png, a.jpg, sub/a.png) gets ``_2``, ..."""
    target = output_dir / f"{path.stem}_x{scale}.png"
    count = 1
    while target in used:
        count += 1
        target = output_dir / f"{path.stem}_x{scale}_{count}.png"
    used.add(target)
    return target


def _load_upscaler(values: flags.FlagValues):
    if values.method == "bicubic":
        if values.scale is None:
            raise ValueError("--scale is required with --method=bicubic")
        return inference.BicubicUpscaler(values.scale)
    config, model, variables = loading.load_model(
        pretrained=values.pretrained, checkpoint=values.checkpoint,
        workdir=None if values.checkpoint else values.workdir)
    if values.scale is not None and values.scale != model.scale:
        raise ValueError(f"the checkpoint's model upscales x{model.scale}; drop --scale")
    return inference.make_upscaler(model, variables=variables, tile=values.tile or None,
                                   tile_overlap=values.tile_overlap, self_ensemble=values.self_ensemble)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (see the module docstring)."""
    values = flags.FlagValues()
    define_flags(values)
    inputs = cli.parse_flags(["drn-upscale", *(sys.argv[1:] if argv is None else argv)], values)[1:]

    # The entry point shows image_io's conversion notes above the progress bar; undone on exit.
    handler = _TqdmHandler()
    io_logger = logging.getLogger(image_io.__name__)
    level, propagate = io_logger.level, io_logger.propagate
    io_logger.addHandler(handler)
    io_logger.setLevel(logging.INFO)  # greyscale replication is an INFO record; show it too
    io_logger.propagate = False
    try:
        return cli.exit_status(_upscale_all, inputs, values)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        io_logger.removeHandler(handler)
        io_logger.setLevel(level)
        io_logger.propagate = propagate


def _upscale_all(inputs: Sequence[str], values: flags.FlagValues) -> int:
    from tqdm import tqdm

    if not inputs:
        raise ValueError(f"no INPUT given; usage: {USAGE}")
    if not values.output_dir:
        raise ValueError(f"--output_dir is required; usage: {USAGE}")
    paths = image_io.expand_inputs(inputs)
    if not paths:
        raise ValueError(f"no PNG, JPEG or BMP images in {', '.join(inputs)}")
    upscaler = _load_upscaler(values)
    output_dir = pathlib.Path(values.output_dir).expanduser()

    failed, used = [], set()
    start = time.perf_counter()
    bar = tqdm(paths, unit="img", file=sys.stderr, disable=values.no_progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name, refresh=False)
        try:
            lr = image_io.read_image(path, max_pixels=values.max_pixels)
            target = _output_path(output_dir, path, upscaler.scale, used)
            image_io.write_png(target, upscaler(lr))
        except ImageReadError as err:
            tqdm.write(f"error: {err}; skipped", file=sys.stderr)
            failed.append(path)
        except (OSError, ValueError, MemoryError) as err:
            # The output folder may be unwritable or the disk full; say which file and why.
            tqdm.write(f"error: {path}: {one_line(err)}; skipped", file=sys.stderr)
            failed.append(path)
    bar.close()
    done = len(paths) - len(failed)
    seconds = time.perf_counter() - start
    print(f"upscaled {done} of {len(paths)} image{'s' * (len(paths) != 1)} x{upscaler.scale} "
          f"into {output_dir} in {seconds:.1f} s"
          + (f"; {len(failed)} failed: {', '.join(str(p) for p in failed)}" if failed else ""),
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


def run() -> None:
    """Console-script entry point (``drn-upscale``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())


if __name__ == "__main__":
    run()
