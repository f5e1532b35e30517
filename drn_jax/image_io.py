"""Reading and writing image files, with one-line errors that name the file.

Every tool in drn-jax (training folders, benchmark sets, the upscaler) reads images
through `read_image`, so a corrupt, truncated, 16-bit, RGBA, greyscale, CMYK or
absurdly large file is handled the same way everywhere:

* files that can be used after a lossless-enough conversion (greyscale, RGBA, CMYK,
  palette, 16-bit) are converted to 8-bit RGB and the conversion is reported through
  `logging` (one line naming the file);
* files that cannot be used raise `ImageReadError`, whose message is one line:
  ``<path>: <what happened>; <what to do>``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import struct
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from drn_jax.errors import ImageReadError
from drn_jax.files import write_atomic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# 64 megapixels: four times a DIV2K image. Larger headers are far more likely to be
# decompression bombs than photographs; the tools take --max_pixels to raise it.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

PathLike = str | os.PathLike


def list_images(folder: PathLike) -> list[pathlib.Path]:
    """Image files (PNG, JPEG, BMP; any case) under `folder`, recursively, sorted.

    Raises `FileNotFoundError` with a one-line message when the folder is missing.
    Non-image files are ignored; an empty result is returned as an empty list so the
    caller can say what it needed the images for.
    """
    root = pathlib.Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; check the path")
    files = [path for path in root.rglob("*") if path.is_file()]
    images = sorted(path for path in files if path.suffix.lower() in IMAGE_EXTENSIONS)
    others = [path for path in files if path.suffix.lower() not in IMAGE_EXTENSIONS]
    if others:
        # One line, not one per file: a README or a .DS_Store is normal in a data folder.
        logger.warning("%s: ignored %d non-image file%s (e.g. %s); images are %s", root, len(others),
                       "" if len(others) == 1 else "s", others[0].name, ", ".join(IMAGE_EXTENSIONS))
    return images


def expand_inputs(inputs: Iterable[PathLike]) -> list[pathlib.Path]:
    """Files as given, folders expanded with `list_images`, in order, without repeats."""
    paths: list[pathlib.Path] = []
    for item in inputs:
        path = pathlib.Path(item).expanduser()
        paths.extend(list_images(path) if path.is_dir() else [path])
    return list(dict.fromkeys(paths))


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels.

    Pillow's own decompression-bomb check is not applied here (it would refuse to even report
    the size): callers compare the size with their own ``max_pixels``.
    """
    try:
        with open(path, "rb") as file:
            prefix = file.read(16)
            Image.init()
            for kind in Image.ID:  # what Image.open does, less its size check
                factory, accept = Image.OPEN[kind]
                try:
                    if accept is not None and not accept(prefix):
                        continue
                    file.seek(0)
                    width, height = factory(file, str(path)).size
                except (SyntaxError, IndexError, TypeError, ValueError, struct.error):
                    continue  # not this format: Image.open tries the next one too
                return height, width
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"not a readable image ({_describe(err)})") from None
    raise ImageReadError(path, f"not a readable image (cannot identify image file {str(path)!r})")


def read_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, quiet: bool = False) -> np.ndarray:
    """Decodes `path` into an 8-bit RGB array of shape (H, W, 3).

    Greyscale is replicated to three channels, alpha is dropped (the colour channels
    are kept as stored), CMYK and palette images are converted by Pillow, and 16-bit
    images are reduced to 8 bits (value * 255 / 65535, rounded). Each conversion is
    logged, naming the file, unless `quiet` (a file decoded once per training crop).

    Raises:
      ImageReadError: the file is missing, not an image, truncated or corrupt, or its
        header declares more than `max_pixels` pixels.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    # Our own limit, from the header, before Pillow's fixed one could refuse with its own value.
    height, width = image_size(path)
    if width * height > max_pixels:
        raise ImageReadError(path, f"header declares {width}x{height} pixels, over the limit of "
                             f"{max_pixels} (a decompression bomb?); raise --max_pixels if it is real")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above
            with Image.open(path) as image:
                width, height = image.size
                if width < 1 or height < 1:
                    raise ImageReadError(path, f"empty image ({width}x{height})")
                image.load()
                pixels = _to_rgb8(path, image, _no_notes if quiet else logger.log)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageReadError(path, f"{_describe(err)}; raise --max_pixels if it is real") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"cannot decode ({_describe(err)}); the file is corrupt or truncated") from None
    return pixels


def _no_notes(level: int, message: str, *args) -> None:
    pass


def _to_rgb8(path: pathlib.Path, image: Image.Image, note: Callable[..., None]) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        note(logging.WARNING, "%s: %s image reduced to 8 bits per channel", path, _mode_name(mode))
        gray = np.clip(np.floor(values * 255.0 / peak + 0.5), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode in ("RGB;16", "RGBA;16"):
        note(logging.WARNING, "%s: 16-bit RGB reduced to 8 bits per channel", path)
    if mode != "RGB":
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            note(logging.WARNING, "%s: alpha channel dropped", path)
        elif mode in ("L", "1"):
            note(logging.INFO, "%s: greyscale image replicated to RGB", path)
        elif mode != "P":
            note(logging.WARNING, "%s: %s image converted to RGB", path, mode)
        image = image.convert("RGB")
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:  # e.g. 16-bit RGB decoded as uint16
        pixels = np.clip(np.floor(pixels.astype(np.float64) * 255.0 / 65535.0 + 0.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def _mode_name(mode: str) -> str:
    return "16-bit greyscale" if mode.startswith("I;16") else "32-bit integer greyscale"


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.rstrip(".")


def write_png(path: PathLike, pixels: np.ndarray) -> None:
    """Writes an (H, W, 3) or (H, W) uint8 array as PNG, creating parent folders.

    Written to a temporary name first and renamed, so a crash never leaves a
    half-written file under the final name.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise TypeError(f"write_png expects uint8 pixels, got {pixels.dtype}")
    image = Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    write_atomic(path, lambda file: image.save(file, format="PNG"))


def read_images(paths: Sequence[PathLike], *, max_pixels: int = DEFAULT_MAX_PIXELS
                ) -> tuple[list[tuple[pathlib.Path, np.ndarray]], list[ImageReadError]]:
    """Reads every path it can; returns ([(path, pixels)], [errors]) in input order."""
    images, errors = [], []
    for path in paths:
        try:
            images.append((pathlib.Path(path), read_image(path, max_pixels=max_pixels)))
        except ImageReadError as err:
            logger.warning("%s", err)
            errors.append(err)
    return images, errors
