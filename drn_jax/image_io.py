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

import dataclasses
import logging
import os
import pathlib
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tifffile  # a dependency of scikit-image; Pillow reads 16-bit colour TIFFs at 8 bits
from PIL import Image, ImageOps

from drn_jax import png16
from drn_jax.errors import ImageReadError
from drn_jax.files import write_atomic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# 64 megapixels: four times a DIV2K image. Larger headers are far more likely to be
# decompression bombs than photographs; the tools take --max_pixels to raise it.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

PathLike = str | os.PathLike


def list_images(folder: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[pathlib.Path]:
    """Image files (by default PNG, JPEG, BMP; any case) under `folder`, recursively, sorted.

    ``extensions`` are lower-case suffixes with the dot (drn-upscale passes
    :data:`PICTURE_EXTENSIONS`, which adds TIFF, WebP and GIF).

    Raises `FileNotFoundError` with a one-line message when the folder is missing.
    Non-image files are ignored; an empty result is returned as an empty list so the
    caller can say what it needed the images for.
    """
    root = pathlib.Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; check the path")
    files = [path for path in root.rglob("*") if path.is_file()]
    images = sorted(path for path in files if path.suffix.lower() in extensions)
    others = [path for path in files if path.suffix.lower() not in extensions]
    if others:
        # One line, not one per file: a README or a .DS_Store is normal in a data folder.
        logger.warning("%s: ignored %d non-image file%s (e.g. %s); images are %s", root, len(others),
                       "" if len(others) == 1 else "s", others[0].name, ", ".join(extensions))
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


def check_pixel_limit(path: pathlib.Path, max_pixels: int) -> None:
    """Raises `ImageReadError` when the header of `path` declares more than `max_pixels` pixels."""
    height, width = image_size(path)
    if width * height > max_pixels:
        raise ImageReadError(path, f"header declares {width}x{height} pixels, over the limit of "
                             f"{max_pixels} (a decompression bomb?); raise --max_pixels if it is real")


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
    check_pixel_limit(path, max_pixels)
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
        peak = float(2 ** _integer_grey_bits(path, image) - 1)
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


def _integer_grey_bits(path: pathlib.Path, image: Image.Image) -> int:
    """8 or 16: the depth of a Pillow integer grey image ("I;16*" or "I"), from the file.

    Not from the values: a dark 16-bit image has no value over 255. Mode "I" is Pillow's 32-bit
    container: a PNG says its depth in IHDR; elsewhere (a PGM with maxval over 255, which Pillow
    scales to 16 bits) it holds more than 8 bits, and is read as 16 (larger values clipped).
    """
    if image.mode.startswith("I;16"):
        return 16
    if image.format == "PNG":
        header = png16.read_header(path)
        return 8 if header is not None and header[0] <= 8 else 16
    return 16


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


# ---------------------------------------------------------------------------
# Pictures: what drn-upscale reads and writes (bit depth, greyscale, alpha, ICC kept)
# ---------------------------------------------------------------------------

PICTURE_EXTENSIONS = IMAGE_EXTENSIONS + (".tif", ".tiff", ".webp", ".gif")
OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNGs written. Pillow's default, 6, took ~5× as long on an upscaled photo
(1.33 s against 0.27 s) for a file 13% smaller (``benchmarks/upscale_e2e.py``'s ``png`` case);
OpenCV's default is 1 too."""
_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclasses.dataclass
class Picture:
    """A decoded image as drn-upscale uses it: its colour, alpha and bit depth kept apart.

    Attributes:
      colour: float32 ``(H, W, 3)`` (RGB) or ``(H, W, 1)`` (greyscale) in ``[0, 1]``, decoded
        at the file's own depth (a 16-bit file is not rounded to 8 bits).
      alpha: float32 ``(H, W, 1)`` in ``[0, 1]``, or ``None`` for an opaque image.
      bits: 8 or 16, the depth to write the result at.
      icc_profile: the embedded ICC profile (bytes), or ``None``.
      notes: one-line conversions made while reading (CMYK, animation, EXIF orientation).
    """

    colour: np.ndarray
    alpha: np.ndarray | None
    bits: int
    icc_profile: bytes | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def grey(self) -> bool:
        return self.colour.shape[-1] == 1


def read_picture(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decodes ``path`` for upscaling: colour and alpha as floats at the file's bit depth.

    EXIF orientation (and a TIFF's Orientation tag) is applied; an animated image gives its
    first frame; CMYK, palette and other colour modes are converted to RGB (RGBA when the
    palette has transparency), with a note. 16-bit grey, grey + alpha and RGB(A) PNGs and
    8/16-bit TIFFs keep their 16 bits; the depth is the file's, not guessed from the values.

    Raises:
      ImageReadError: missing, not an image, truncated or corrupt, or its header declares more
        than ``max_pixels`` pixels (one line naming the file).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.is_dir() else "a folder, not an image")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return _read_tiff(path, max_pixels)
    check_pixel_limit(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above
            with Image.open(path) as image:
                if min(image.size) < 1:
                    raise ImageReadError(path, f"empty image ({image.width}x{image.height})")
                return _picture(path, image)
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error) as err:
        raise ImageReadError(path, f"cannot decode ({_describe(err)}); the file is corrupt or truncated") from None


def _picture(path: pathlib.Path, image: Image.Image) -> Picture:
    notes = []
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"{path}: animated ({image.n_frames} frames); the first frame is upscaled")
        image.seek(0)
    icc = image.info.get("icc_profile") or None
    # Before load: Pillow's TIFF loader applies the Orientation tag itself and then drops it
    # (exif_transpose below then finds nothing more to do).
    orientation = image.getexif().get(0x0112, 1)
    deep_png = image.format == "PNG" and png16.is_deep_colour(path)
    if deep_png:
        pixels = png16.decode(path)  # Pillow decodes 16-bit colour PNGs at 8 bits
    image.load()
    if orientation != 1:
        notes.append(f"{path}: EXIF orientation {orientation} applied")
    if deep_png:
        pixels = _orient(pixels, orientation)
        colour, alpha = _split_alpha(pixels)
        return Picture(_unit(colour, 16), None if alpha is None else _unit(alpha, 16), 16, icc, notes)
    image = ImageOps.exif_transpose(image) if orientation != 1 else image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image).astype(np.float64)
        bits = _integer_grey_bits(path, image)
        grey = np.clip(values, 0, 2 ** bits - 1)[..., None]
        return Picture((grey / (2 ** bits - 1)).astype(np.float32), None, bits, icc, notes)
    if mode == "F":
        notes.append(f"{path}: floating-point image read as 16-bit grey, clipped to [0, 1]")
        grey = np.clip(np.asarray(image, np.float32), 0.0, 1.0)[..., None]
        return Picture(grey, None, 16, icc, notes)
    if mode in ("1", "L"):
        return Picture(_unit(np.asarray(image.convert("L"))[..., None], 8), None, 8, icc, notes)
    if mode in ("LA", "La"):
        pixels = np.asarray(image.convert("LA"))
        return Picture(_unit(pixels[..., :1], 8), _unit(pixels[..., 1:], 8), 8, icc, notes)
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        pixels = np.asarray(image.convert("RGBA"))
        return Picture(_unit(pixels[..., :3], 8), _unit(pixels[..., 3:], 8), 8, icc, notes)
    if mode not in ("RGB", "P"):
        notes.append(f"{path}: {mode} image converted to RGB")
        if mode == "CMYK":
            icc = None  # a CMYK profile does not describe the converted RGB values
    return Picture(_unit(np.asarray(image.convert("RGB")), 8), None, 8, icc, notes)


def _unit(values: np.ndarray, bits: int) -> np.ndarray:
    return (np.asarray(values, np.float32) / np.float32(2 ** bits - 1)).astype(np.float32)


def _split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(H, W, 1-4)`` -> (colour, alpha or None): 2 channels are grey + alpha, 4 are RGBA."""
    colour_channels = 1 if pixels.shape[-1] <= 2 else 3
    alpha = pixels[..., colour_channels:colour_channels + 1] if pixels.shape[-1] in (2, 4) else None
    return pixels[..., :colour_channels], alpha


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF/TIFF orientation (1-8) applied to an ``(H, W, C)`` array, as ``ImageOps.exif_transpose``.

    5 is the transpose (``out[i, j] = a[j, i]``), 7 the transverse (``out[i, j] = a[H-1-j, W-1-i]``).
    """
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1), 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops.get(orientation, lambda a: a)(pixels))


def _read_tiff(path: pathlib.Path, max_pixels: int) -> Picture:
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            height, width = page.shape[:2]
            if width * height > max_pixels:
                raise ImageReadError(path, f"header declares {width}x{height} pixels, over the limit "
                                     f"of {max_pixels}; raise --max_pixels if it is real")
            pixels = page.asarray()
            icc_tag = page.tags.get(34675)  # InterColorProfile
            icc = bytes(icc_tag.value) if icc_tag is not None else None
            notes = [f"{path}: {len(tif.pages)} pages; the first is upscaled"] if len(tif.pages) > 1 else []
            photometric = page.photometric
            orientation_tag = page.tags.get(274)  # Orientation, the values EXIF uses
            orientation = int(orientation_tag.value) if orientation_tag is not None else 1
    except ImageReadError:
        raise
    except (OSError, ValueError, KeyError, IndexError, struct.error, tifffile.TiffFileError) as err:
        raise ImageReadError(path, f"cannot decode ({_describe(err)}); the file is corrupt or truncated") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4) or min(pixels.shape[:2]) < 1:
        raise ImageReadError(path, f"unsupported TIFF layout {pixels.shape}; use RGB(A) or grey")
    if pixels.dtype == np.uint8:
        bits = 8
    elif pixels.dtype == np.uint16:
        bits = 16
    else:
        raise ImageReadError(path, f"unsupported TIFF sample type {pixels.dtype}; use 8 or 16 bits")
    if photometric == tifffile.PHOTOMETRIC.SEPARATED:
        raise ImageReadError(path, "CMYK TIFF; convert it to RGB first")
    if 2 <= orientation <= 8:  # 1 is upright; other values are not orientations
        notes.append(f"{path}: TIFF orientation {orientation} applied")
        pixels = _orient(pixels, orientation)
    colour, alpha = _split_alpha(pixels)
    return Picture(_unit(colour, bits), None if alpha is None else _unit(alpha, bits), bits, icc, notes)


def write_picture(path: PathLike, pixels: np.ndarray, *, format: str = "png", quality: int = 95,
                  icc_profile: bytes | None = None) -> list[str]:
    """Writes uint8 or uint16 ``(H, W, C)`` pixels (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).

    ``format`` is a key of :data:`OUTPUT_FORMATS`; ``quality`` (1-100) is JPEG's and WebP's.
    uint16 is written as a 16-bit PNG; JPEG and WebP are 8-bit (16-bit values are rounded, with
    a note) and JPEG has no alpha (dropped, with a note). The ICC profile is embedded. Written
    atomically (:func:`drn_jax.files.write_atomic`). Returns the notes.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4) or pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"expected uint8/uint16 (H, W, 1-4) pixels; got {pixels.dtype} {pixels.shape}")
    if format not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(OUTPUT_FORMATS)}; got {format!r}")
    notes = []
    if pixels.dtype == np.uint16 and format != "png":
        notes.append(f"{path}: {format} is 8-bit; 16-bit values rounded to 8 bits")
        pixels = np.floor(pixels.astype(np.float64) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    if format == "jpg" and pixels.shape[-1] in (2, 4):
        notes.append(f"{path}: JPEG has no alpha; alpha dropped (use --format=png or webp)")
        pixels = pixels[..., :-1]
    if pixels.dtype == np.uint16:
        if pixels.shape[-1] == 1:  # Pillow writes 16-bit grey PNGs itself
            image = Image.fromarray(pixels[..., 0])
        else:
            write_atomic(path, png16.encode(pixels, icc_profile, compress_level=PNG_COMPRESS_LEVEL))
            return notes
    else:
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels,
                                {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[-1]])
    options = {"icc_profile": icc_profile} if icc_profile else {}
    if format in ("jpg", "webp"):
        options["quality"] = int(quality)
    else:
        options["compress_level"] = PNG_COMPRESS_LEVEL
    write_atomic(path, lambda file: image.save(file, format=OUTPUT_FORMATS[format], **options))
    return notes
