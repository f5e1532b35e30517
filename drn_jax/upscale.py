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

import argparse
import logging
import os
import pathlib
import sys
import time
from collections.abc import Sequence

from drn_jax import image_io

DEFAULT_WORKDIR = "runs/default"
DEFAULT_TILE = 256


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drn-upscale",
        description="Upscale images with a trained DRN; writes <stem>_x<scale>.png files.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--output_dir", required=True, help="folder for the upscaled PNGs")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR,
                        help="training workdir whose latest checkpoint is used (default: %(default)s)")
    parser.add_argument("--checkpoint", help="a checkpoint step folder <workdir>/checkpoints/<step>")
    parser.add_argument("--pretrained", metavar="NAME",
                        help="a pretrained model shipped with the package (e.g. x4), used instead of "
                             "--workdir; `python -m drn_jax.pretrained list` shows them")
    parser.add_argument("--method", choices=("model", "bicubic"), default="model",
                        help="the network, or MATLAB bicubic as a baseline (default: %(default)s)")
    parser.add_argument("--scale", type=int, help="upscaling factor (bicubic only; a model has its own)")
    parser.add_argument("--self_ensemble", action="store_true",
                        help="average the 8 flips/rotations (8x slower, slightly better)")
    parser.add_argument("--tile", type=_non_negative_int, default=DEFAULT_TILE,
                        help="tile side in LR pixels; 0 runs whole images (default: %(default)s)")
    parser.add_argument("--tile_overlap", type=_non_negative_int,
                        help="LR pixels of context around each tile (default: the receptive-field radius)")
    parser.add_argument("--max_pixels", type=_positive_int, default=image_io.DEFAULT_MAX_PIXELS,
                        help="refuse images whose header declares more pixels (default: %(default)s)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


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


def _load_upscaler(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from drn_jax import inference

    if args.method == "bicubic":
        if args.scale is None:
            parser.error("--scale is required with --method=bicubic")
        return inference.BicubicUpscaler(args.scale)
    if args.pretrained:
        if args.checkpoint:
            parser.error("give --pretrained or --checkpoint, not both")
        from drn_jax import pretrained

        config, model, variables = pretrained.load(args.pretrained)
    else:
        from drn_jax import checkpointing

        config, model, variables = checkpointing.load_for_inference(
            workdir=None if args.checkpoint else args.workdir, checkpoint=args.checkpoint)
    if args.scale is not None and args.scale != model.scale:
        parser.error(f"the checkpoint's model upscales x{model.scale}; drop --scale")
    return inference.make_upscaler(model, variables=variables, tile=args.tile or None,
                                   tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 on usage errors

    handler = _TqdmHandler()
    io_logger = logging.getLogger(image_io.__name__)
    io_logger.addHandler(handler)
    io_logger.setLevel(logging.INFO)  # greyscale replication is an INFO record; show it too
    io_logger.propagate = False
    try:
        return _upscale_all(args, parser)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        io_logger.removeHandler(handler)
        io_logger.propagate = True


def _upscale_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tqdm import tqdm

    try:
        paths = image_io.expand_inputs(args.inputs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not paths:
        parser.error(f"no PNG, JPEG or BMP images in {', '.join(args.inputs)}")
    try:
        upscaler = _load_upscaler(args, parser)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    output_dir = pathlib.Path(args.output_dir).expanduser()

    failed, used = [], set()
    start = time.perf_counter()
    bar = tqdm(paths, unit="img", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name, refresh=False)
        try:
            lr = image_io.read_image(path, max_pixels=args.max_pixels)
            target = _output_path(output_dir, path, upscaler.scale, used)
            image_io.write_png(target, upscaler(lr))
        except image_io.ImageReadError as err:
            tqdm.write(f"error: {err}; skipped", file=sys.stderr)
            failed.append(path)
        except (OSError, ValueError, MemoryError) as err:
            # The output folder may be unwritable or the disk full; say which file and why.
            reason = " ".join(str(err).split()) or type(err).__name__
            tqdm.write(f"error: {path}: {reason}; skipped", file=sys.stderr)
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
