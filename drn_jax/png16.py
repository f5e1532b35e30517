"""16-bit PNGs with colour or alpha: the ones Pillow reads and writes at 8 bits only.

Pillow (13) keeps 16 bits for grey PNGs ("I;16") but decodes 16-bit RGB, RGBA and grey + alpha
PNGs to 8 bits and has no mode to write them; imageio reads PNGs through Pillow, and no other
PNG codec is a dependency. drn-upscale keeps 16-bit pictures at 16 bits, so this module reads
and writes those PNGs itself (zlib and NumPy), following the PNG specification:

* `decode`: non-interlaced 16-bit grey, grey + alpha, RGB and RGBA, all five row filters;
* `encode`: the same colour types, filter 0 (none) on every row, an optional ICC profile.

Undoing the filters is sequential along a row and down the rows: a byte depends on the decoded
bytes to its left, above and above-left. Those three lie on the previous anti-diagonal
(pixel ``x + y - 1``, or ``- 2``), so `decode` works one anti-diagonal at a time, all its pixels
in one NumPy step: ``width + height - 1`` steps, not one per pixel.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zlib

import numpy as np

from drn_jax.errors import ImageReadError

__all__ = ["CHANNELS", "SIGNATURE", "decode", "encode", "is_deep_colour", "read_header"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
"""PNG colour type -> channels: grey, RGB, grey + alpha, RGBA (the types without a palette)."""

_COLOUR_TYPES = {channels: kind for kind, channels in CHANNELS.items()}
_CORRUPT = "the file is corrupt or truncated"


def read_header(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from any PNG's IHDR, or ``None`` if ``path`` is not a PNG."""
    with open(path, "rb") as file:
        head = file.read(33)
    if len(head) < 29 or head[:8] != SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def is_deep_colour(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a 16-bit RGB, RGBA or grey + alpha PNG: one Pillow reads at 8 bits
    (16-bit grey alone it reads at 16)."""
    header = read_header(path)
    return header is not None and header[0] == 16 and header[1] in CHANNELS and header[1] != 0


def decode(path: str | os.PathLike) -> np.ndarray:
    """The uint16 ``(H, W, C)`` pixels of a non-interlaced 16-bit PNG without a palette.

    C is 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). Chunks other than IHDR, IDAT and IEND
    are skipped (orientation and ICC are read by the caller); CRCs are not checked (zlib's own
    checksum covers the pixels).

    Raises:
      ImageReadError: not such a PNG (other depths, palette, interlaced), or truncated or corrupt;
        one line naming the file.
    """
    path = pathlib.Path(path)
    header, data = _chunks(path, path.read_bytes())
    width, height, depth, colour_type, _, _, interlace = header
    if depth != 16 or colour_type not in CHANNELS:
        raise ImageReadError(path, f"not a 16-bit PNG without a palette (bit depth {depth}, colour type "
                             f"{colour_type}); read it with Pillow")
    if interlace:
        raise ImageReadError(path, "an interlaced 16-bit PNG, which drn-jax does not read; "
                             "save it without interlacing")
    if width < 1 or height < 1:
        raise ImageReadError(path, f"empty image ({width}x{height})")
    channels = CHANNELS[colour_type]
    stride = 2 * channels * width
    try:
        raw = zlib.decompress(data)
    except zlib.error as err:
        raise ImageReadError(path, f"cannot decode (zlib: {err}); {_CORRUPT}") from None
    if len(raw) < height * (stride + 1):
        raise ImageReadError(path, f"cannot decode ({len(raw)} bytes of image data, {width}x{height} "
                             f"needs {height * (stride + 1)}); {_CORRUPT}")
    rows = np.frombuffer(raw, np.uint8, height * (stride + 1)).reshape(height, stride + 1)
    if rows[:, 0].max() > 4:
        raise ImageReadError(path, f"cannot decode (row filter type {rows[:, 0].max()}, not 0-4); {_CORRUPT}")
    pixels = _unfilter(rows[:, 0], rows[:, 1:].reshape(height, width, 2 * channels))
    return pixels.view(">u2").astype(np.uint16).reshape(height, width, channels)


def _chunks(path: pathlib.Path, data: bytes) -> tuple[tuple[int, ...], bytes]:
    """(the IHDR fields, the IDAT bodies joined) of the PNG bytes ``data``."""
    if data[:8] != SIGNATURE:
        raise ImageReadError(path, "not a PNG (no PNG signature)")
    offset, idat, header = 8, [], None
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset: offset + 8])
        body = data[offset + 8: offset + 8 + length]
        if len(body) < length:
            raise ImageReadError(path, f"cannot decode (truncated {kind.decode('latin-1')} chunk); {_CORRUPT}")
        if kind == b"IHDR" and length == 13:
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        offset += 12 + length
    if header is None or not idat:
        raise ImageReadError(path, f"cannot decode (no {'IHDR' if header is None else 'IDAT'} chunk); {_CORRUPT}")
    return header, b"".join(idat)


def _unfilter(kinds: np.ndarray, filtered: np.ndarray) -> np.ndarray:
    """Undoes the PNG row filters: ``kinds`` (H,) filter types 0-4, ``filtered`` (H, W, bpp) bytes.

    The decoded bytes are written into ``out`` (H + 1, W + 1, bpp), whose row 0 and column 0 stay
    zero (the row above the first and the pixel left of the first, as the specification has them).
    ``skew`` views the same memory with ``skew[r, k] = out[r, k - r]`` (a row stride one pixel
    shorter), so anti-diagonal ``d`` of the image is the column ``skew[:, d + 2]`` and its left,
    above and above-left neighbours are columns ``d + 1`` (rows r and r - 1) and ``d``: each step
    reads and writes column slices. Only ``0 <= k - r <= W`` is used, where no two views overlap.
    """
    height, width, bpp = filtered.shape
    assert filtered.strides[1:] == (bpp, 1), filtered.strides  # uint8, each pixel's bytes adjacent
    if not kinds.any():  # all rows unfiltered (what `encode` writes)
        return filtered.copy()
    out = np.zeros((height + 1, width + 1, bpp), np.uint8)
    skew = np.lib.stride_tricks.as_strided(out, (height + 1, height + width + 1, bpp),
                                           (out.strides[0] - bpp, bpp, 1), writeable=True)
    source = np.lib.stride_tricks.as_strided(filtered, (height, height + width - 1, bpp),
                                             (filtered.strides[0] - bpp, bpp, 1), writeable=False)
    # Filters 0-3 predict (a * left + b * up) >> 1 with these per-row a, b; 4 (Paeth) apart.
    # (Faster than picking among five predictions per pixel with np.choose.)
    left_weight = np.array([0, 2, 0, 1, 0], np.int16)[kinds][:, None]
    up_weight = np.array([0, 0, 2, 1, 0], np.int16)[kinds][:, None]
    is_paeth = (kinds == 4)[:, None]
    for d in range(height + width - 1):
        top, bottom = max(0, d - width + 1), min(height - 1, d)  # the image rows on this diagonal
        left = skew[top + 1: bottom + 2, d + 1].astype(np.int16)
        up = skew[top: bottom + 1, d + 1].astype(np.int16)
        corner = skew[top: bottom + 1, d].astype(np.int16)
        # Paeth: of left, up and corner, the one nearest to left + up - corner; ties in that order.
        to_left, to_up, to_corner = np.abs(up - corner), np.abs(left - corner), np.abs(left + up - 2 * corner)
        paeth = np.where((to_left <= to_up) & (to_left <= to_corner), left,
                         np.where(to_up <= to_corner, up, corner))
        rows = slice(top, bottom + 1)
        predictor = np.where(is_paeth[rows], paeth, (left_weight[rows] * left + up_weight[rows] * up) >> 1)
        skew[top + 1: bottom + 2, d + 2] = source[rows, d] + predictor.astype(np.uint8)
    return out[1:, 1:]


def encode(pixels: np.ndarray, icc_profile: bytes | None = None, *, compress_level: int = 6) -> bytes:
    """The bytes of a 16-bit PNG of uint16 ``(H, W, C)`` pixels (C: 1 grey, 2 grey + alpha, 3 RGB,
    4 RGBA): filter 0 on every row, IDAT at zlib ``compress_level``, the ICC profile in iCCP."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[-1] not in _COLOUR_TYPES:
        raise TypeError(f"expected uint16 (H, W, 1-4) pixels; got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = pixels.astype(">u2").reshape(height, width * channels).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, _COLOUR_TYPES[channels], 0, 0, 0)
    chunks = [chunk(b"IHDR", ihdr)]
    if icc_profile:
        chunks.append(chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile)))
    chunks += [chunk(b"IDAT", zlib.compress(raw, compress_level)), chunk(b"IEND", b"")]
    return SIGNATURE + b"".join(chunks)
