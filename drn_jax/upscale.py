"""Upscales image files with a trained DRN: ``drn-upscale INPUT... --output_dir DIR``.

Files and folders of PNG, JPEG, BMP, TIFF, WebP and GIF go in; ``<stem>_x<factor>.<ext>`` files
come out, with alpha, 16-bit depth, greyscale, orientation and the ICC profile kept. Bad
files are one line each and the batch goes on; exit 0 if every image was written, 1 if any
failed, 2 for usage errors.

How it works: docs/internals.md#the-upscaler-drn-upscale.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import sys
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from scipy import ndimage

from drn_jax import cli, image_io, inference, loading
from drn_jax.errors import ImageReadError, one_line
from drn_jax.resize import imresize_host

__all__ = ["define_flags", "fill_transparent", "main", "outscale_size", "run", "upscale_picture"]

DEFAULT_TILE = cli.DEFAULT_TILE
BICUBIC_RADIUS = 2  # LR pixels the bicubic kernel reads on each side when enlarging
USAGE = "drn-upscale INPUT... --output_dir=DIR [--pretrained=NAME | --workdir=RUN | --checkpoint=STEP_DIR]"


def define_flags(values: flags.FlagValues) -> None:
    """drn-upscale's flags, in `values` (a private `flags.FlagValues`: no global flags)."""
    flags.DEFINE_string("output_dir", None, "folder for the upscaled images", flag_values=values)
    cli.define_model_flags(values, what="used")
    flags.DEFINE_enum("method", "model", ["model", "bicubic"],
                      "the network, or MATLAB bicubic as a baseline", flag_values=values)
    flags.DEFINE_integer("scale", None, "upscaling factor (bicubic only; a model has its own)", flag_values=values)
    flags.DEFINE_float("outscale", None, "final factor, any positive number (default: the scale): the "
                       "model's scale, then bicubic to floor(outscale * side + 0.5) pixels per side "
                       "(halves round up; at least 1)", lower_bound=0.0, flag_values=values)
    flags.DEFINE_enum("alpha", "bicubic", ["bicubic", "network"],
                      "how the alpha channel is upscaled", flag_values=values)
    flags.DEFINE_enum("format", "png", list(image_io.OUTPUT_FORMATS), "output file type", flag_values=values)
    flags.DEFINE_integer("quality", 95, "JPEG / WebP quality", lower_bound=1, upper_bound=100,
                         flag_values=values)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                      "the network's computation type (bfloat16 for accelerators)", flag_values=values)
    flags.DEFINE_bool("overwrite", False, "replace existing outputs", flag_values=values)
    flags.DEFINE_bool("self_ensemble", False, "average the 8 flips/rotations (8x slower, slightly better)",
                      flag_values=values)
    cli.define_tile_flags(values)
    flags.DEFINE_integer("tiles_per_device", 1, "tiles each device runs per network call", lower_bound=1,
                         flag_values=values)
    flags.DEFINE_integer("max_pixels", image_io.DEFAULT_MAX_PIXELS,
                         "refuse images whose header declares more pixels", lower_bound=1, flag_values=values)
    flags.DEFINE_bool("no_progress", False, "no progress bar", flag_values=values)
    flags.DEFINE_bool("timings", False, "print where the time went (load, compile, read, network, write) as "
                      "one JSON line on stderr", flag_values=values)
    cli.define_compilation_cache_flag(values)  # used by run(), the console script


class _TqdmHandler(logging.Handler):
    """Prints log records as ``warning: <message>`` lines without breaking the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        level = "warning" if record.levelno >= logging.WARNING else "note"
        tqdm.write(f"{level}: {record.getMessage()}", file=sys.stderr)


def _factor_text(factor: float) -> str:
    return f"{factor:g}"


def _output_path(output_dir: pathlib.Path, path: pathlib.Path, factor: float, extension: str,
                 used: set[pathlib.Path]) -> pathlib.Path:
    """``<stem>_x<factor>.<ext>``; a stem seen before in this run (a.png, a.jpg, sub/a.png) gets ``_2``, ..."""
    tag = _factor_text(factor)
    target = output_dir / f"{path.stem}_x{tag}.{extension}"
    count = 1
    while target in used:
        count += 1
        target = output_dir / f"{path.stem}_x{tag}_{count}.{extension}"
    used.add(target)
    return target


def fill_transparent(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``colour`` with every fully transparent pixel given the colour of the nearest pixel that
    is not (Euclidean distance; ties as ``scipy.ndimage.distance_transform_edt`` breaks them).

    What a file stores under alpha 0 is arbitrary (often black or a stale background); any
    upscaler mixes it into the visible pixels next to it. An image without a visible pixel is
    returned unchanged.

    Args:
      colour: float ``(H, W, C)``.
      alpha: float ``(H, W, 1)`` in ``[0, 1]``.
    """
    hidden = alpha[..., 0] <= 0
    if not hidden.any() or hidden.all():
        return colour
    _, (rows, cols) = ndimage.distance_transform_edt(hidden, return_indices=True)
    return colour[rows, cols]


def _bicubic_predict(scale: int):
    def predict(batch: np.ndarray) -> np.ndarray:
        return imresize_host(batch, scale)
    return predict


def outscale_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """``--outscale``'s output size: each side ``floor(side · outscale + 0.5)``, at least 1.

    Halves round up (21 × 2.5 gives 53 and 19 × 2.5 gives 48), not to even as Python's
    ``round`` does; ``side · outscale`` is the float64 product.
    """
    return max(1, math.floor(height * outscale + 0.5)), max(1, math.floor(width * outscale + 0.5))


def upscale_picture(picture: image_io.Picture, colour: inference.Upscaler, *, alpha_mode: str = "bicubic",
                    outscale: float | None = None) -> np.ndarray:
    """The upscaled picture as uint8/uint16 ``(H', W', C)`` pixels at the picture's bit depth.

    ``C`` is the picture's: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA. ``colour`` upscales the
    colour (a grey picture is fed as R = G = B and comes back as the mean of the three);
    the alpha goes through ``colour`` too with ``alpha_mode="network"``, else through the
    project's bicubic in the same tiles (tiled bicubic equals whole-image bicubic: its border
    rule is the mirror the tiles are padded with). ``outscale`` (default: ``colour.scale``)
    resizes both with the bicubic afterwards, to :func:`outscale_size` of ``(H, W)``.

    Fully transparent pixels' colour is first filled from their visible neighbours
    (:func:`fill_transparent`).
    """
    scale = colour.scale
    bits = picture.bits
    final = None if outscale is None or outscale == scale else outscale
    height, width = picture.colour.shape[:2]

    def run(upscaler: inference.Upscaler, image: np.ndarray, grey: bool) -> np.ndarray:
        rgb = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
        if final is None:
            return upscaler.upscale_to(rgb, bits, grey=grey)
        size = outscale_size(height, width, final)
        enlarged = imresize_host(upscaler.upscale_to(rgb, None, grey=grey), output_size=size)
        return inference.to_bits(enlarged, bits)

    source = picture.colour
    if picture.alpha is not None:
        source = fill_transparent(source, picture.alpha)
    channels = [run(colour, source, picture.grey)]
    if picture.alpha is not None:
        if alpha_mode == "network":
            alpha_upscaler = colour
        elif alpha_mode == "bicubic":
            alpha_upscaler = inference.make_upscaler(
                _bicubic_predict(scale), scale, tile=colour.tile,
                tile_overlap=BICUBIC_RADIUS if colour.tile else None)
        else:
            raise ValueError(f"alpha_mode must be bicubic or network; got {alpha_mode!r}")
        channels.append(run(alpha_upscaler, picture.alpha, True))
    return channels[0] if len(channels) == 1 else np.concatenate(channels, axis=-1)


def _load_upscaler(values: flags.FlagValues) -> inference.Upscaler:
    if values.method == "bicubic":
        if values.scale is None:
            raise ValueError("--scale is required with --method=bicubic")
        tile = values.tile or None
        return inference.make_upscaler(_bicubic_predict(values.scale), values.scale, tile=tile,
                                       tile_overlap=BICUBIC_RADIUS if tile else None)
    overrides = {"dtype": jnp.bfloat16} if values.dtype == "bfloat16" else {}
    config, model, variables = loading.load_model(cli.chosen_model(values), **overrides)
    if values.scale is not None and values.scale != model.scale:
        raise ValueError(f"the checkpoint's model upscales x{model.scale}; drop --scale")
    return inference.make_upscaler(model, variables=variables, tile=values.tile or None,
                                   tile_overlap=values.tile_overlap, self_ensemble=values.self_ensemble,
                                   devices=jax.local_devices(), tiles_per_device=values.tiles_per_device)


def main(argv: Sequence[str] | None = None, *, entry_point: bool = False) -> int:
    """Runs the command line; returns the exit status (see the module docstring).

    `entry_point`: True from :func:`run`, the console script, which sets up the process
    (:func:`drn_jax.cli.console_command`); in-process callers leave it.
    """
    # The entry point shows image_io's notes above the progress bar; undone on exit.
    handler = _TqdmHandler()
    io_logger = logging.getLogger(image_io.__name__)
    level, propagate = io_logger.level, io_logger.propagate
    io_logger.addHandler(handler)
    io_logger.setLevel(logging.INFO)
    io_logger.propagate = False
    try:
        return cli.console_command("drn-upscale", define_flags, _upscale_all, argv, entry_point=entry_point)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        io_logger.removeHandler(handler)
        io_logger.setLevel(level)
        io_logger.propagate = propagate


def _expand(inputs: Sequence[str]) -> tuple[list[pathlib.Path], list[str]]:
    """(image paths in order, without repeats; one-line errors for folders without images)."""
    paths, errors = [], []
    for item in inputs:
        path = pathlib.Path(item).expanduser()
        if path.is_dir():
            found = image_io.list_images(path, image_io.PICTURE_EXTENSIONS)
            if not found:
                errors.append(f"{path}: a folder without images ({', '.join(image_io.PICTURE_EXTENSIONS)}, "
                              "searched recursively)")
            paths.extend(found)
        else:
            paths.append(path)
    return list(dict.fromkeys(paths)), errors


class _Phases:
    """``--timings``: wall seconds per phase of a run, and the compilations' (JAX's monitoring
    events, listened to only inside ``with``), printed as one JSON line by :meth:`report`."""

    # Tracing, lowering, and XLA's compilation or its load from the persistent cache.
    COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                      "/jax/core/compile/backend_compile_duration")

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.seconds = {"load": 0.0, "read": 0.0, "upscale": 0.0, "write": 0.0}
        self.compile = self.compile_at_load = 0.0
        self._start = time.perf_counter()

    def _listen(self, event: str, duration: float, **_: object) -> None:
        if event in self.COMPILE_EVENTS:
            self.compile += duration

    def __enter__(self) -> _Phases:
        if self.enabled:
            jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *_: object) -> None:
        if self.enabled:
            jax.monitoring.unregister_event_duration_listener(self._listen)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def report(self, upscaler: inference.Upscaler, images: int) -> None:
        """``{"timings": {...}}`` on stderr: ``compile`` is the compilations after loading (all
        in the network calls; tracing while loading counts as loading), ``network`` the network
        calls less those, ``tiles`` the tiling and conversions around the calls."""
        if not self.enabled:
            return
        network = getattr(upscaler, "network_seconds", 0.0)
        compile_s = min(self.compile - self.compile_at_load, network)
        phases = {"load": self.seconds["load"], "compile": compile_s, "read": self.seconds["read"],
                  "network": network - compile_s,
                  "tiles": self.seconds["upscale"] - network, "write": self.seconds["write"]}
        shapes = [list(shape) for shape in getattr(upscaler, "shapes", [])]
        print(json.dumps({"timings": {key: round(value, 4) for key, value in phases.items()},
                          "main_s": round(time.perf_counter() - self._start, 4), "images": images,
                          "network_shapes": shapes}), file=sys.stderr, flush=True)


def _upscale_all(inputs: Sequence[str], values: flags.FlagValues) -> int:
    with _Phases(values.timings) as phases:
        return _upscale_files(inputs, values, phases)


def _upscale_files(inputs: Sequence[str], values: flags.FlagValues, phases: _Phases) -> int:
    from tqdm import tqdm

    if not inputs:
        raise ValueError(f"no INPUT given; usage: {USAGE}")
    if not values.output_dir:
        raise ValueError(f"--output_dir is required; usage: {USAGE}")
    if values.outscale is not None and values.outscale <= 0:
        raise ValueError(f"--outscale must be positive; got {values.outscale}")
    paths, folder_errors = _expand(inputs)
    if not paths:
        raise ValueError(f"no images in {', '.join(inputs)}")
    with phases("load"):
        upscaler = _load_upscaler(values)
    phases.compile_at_load = phases.compile
    output_dir = pathlib.Path(values.output_dir).expanduser()
    factor = values.outscale if values.outscale is not None else upscaler.scale
    extension = values.format

    for message in folder_errors:
        print(f"error: {message}; skipped", file=sys.stderr)
    failed, used = [], set()
    start = time.perf_counter()
    bar = tqdm(paths, unit="img", file=sys.stderr, disable=values.no_progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name, refresh=False)
        try:
            target = _output_path(output_dir, path, factor, extension, used)
            if target.exists() and not values.overwrite:
                raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
            with phases("read"):
                picture = image_io.read_picture(path, max_pixels=values.max_pixels)
            for note in picture.notes:
                tqdm.write(f"note: {note}", file=sys.stderr)
            with phases("upscale"):
                pixels = upscale_picture(picture, upscaler, alpha_mode=values.alpha, outscale=values.outscale)
            with phases("write"):
                notes = image_io.write_picture(target, pixels, format=values.format, quality=values.quality,
                                               icc_profile=picture.icc_profile)
            for note in notes:
                tqdm.write(f"note: {note}", file=sys.stderr)
        except ImageReadError as err:
            tqdm.write(f"error: {err}; skipped", file=sys.stderr)
            failed.append(path)
        except (OSError, ValueError, MemoryError) as err:
            # The output folder may be unwritable or the disk full; say which file and why.
            tqdm.write(f"error: {path}: {one_line(err)}; skipped", file=sys.stderr)
            failed.append(path)
    bar.close()
    done = len(paths) - len(failed)
    total = len(paths) + len(folder_errors)
    failures = [str(p) for p in failed] + [m.split(":", 1)[0] for m in folder_errors]
    seconds = time.perf_counter() - start
    print(f"upscaled {done} of {total} image{'s' * (total != 1)} x{_factor_text(factor)} "
          f"into {output_dir} in {seconds:.1f} s"
          + (f"; {len(failures)} failed: {', '.join(failures)}" if failures else ""),
          file=sys.stderr if failures else sys.stdout)
    phases.report(upscaler, done)
    return 1 if failures else 0


def run() -> None:
    """Console-script entry point (``drn-upscale``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(entry_point=True))


if __name__ == "__main__":
    run()
