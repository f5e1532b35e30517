#!/usr/bin/env python3
"""Decode time of a 16-bit RGB PNG by `drn_jax.png16.decode`, with Pillow's 8-bit decode as the peer.

    python benchmarks/png16_decode.py                    # ../shared/data/train/BSD200's first image
    python benchmarks/png16_decode.py --image=FILE --repeats=9

The picture (481x321 for BSD200) is made 16-bit (each value * 257, plus noise in the low byte so
the low bytes are not copies of the high ones) and written three ways: every row with filter 0
(what drn-upscale writes), every row Paeth (the slowest filter to undo), and per row the filter
with the smallest sum of absolute signed bytes (libpng's heuristic; what other programs write).
Pillow reads the same files at 8 bits (its C decoder undoes the same filters), so the ratio
``png16 / pillow`` is the cost of decoding in NumPy. Times are this process's CPU time (both
decoders run on one thread), which other load on a shared machine disturbs less than wall time;
compare only numbers taken in one run. Prints one JSON object: ``{"image": ..., "size": [W, H],
"files": {"none": {"png16_ms": ..., "pillow_ms": ..., "ratio": ...}, "paeth": ..., "adaptive":
...}}`` (medians over ``--repeats``).
"""

from __future__ import annotations

import json
import pathlib
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drn_jax import png16, recipes  # noqa: E402  (after the path is set)

BSD200 = recipes.shared_data_dir() / "train" / "BSD200"

_IMAGE = flags.DEFINE_string("image", None, "an 8-bit RGB picture; default: BSD200's first, else a generated "
                             "481x321 one")
_REPEATS = flags.DEFINE_integer("repeats", 5, "decodes of each file; the median is reported")


def _filtered(raw: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    """Every row of ``raw`` (H, stride) uint8 filtered with PNG filter ``kind``, as int32 mod 256."""
    line = raw.astype(np.int32)
    up = np.concatenate([np.zeros((1, line.shape[1]), np.int32), line[:-1]])
    left = np.concatenate([np.zeros((line.shape[0], bpp), np.int32), line[:, :-bpp]], axis=1)
    corner = np.concatenate([np.zeros((line.shape[0], bpp), np.int32), up[:, :-bpp]], axis=1)
    if kind == 0:
        predictor = np.zeros_like(line)
    elif kind == 1:
        predictor = left
    elif kind == 2:
        predictor = up
    elif kind == 3:
        predictor = (left + up) // 2
    else:
        p = left + up - corner
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - corner)
        predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
    return (line - predictor) & 255


def filter_rows(pixels: np.ndarray, kinds: Sequence[int]) -> bytes:
    """The PNG scanlines of uint16 ``pixels`` (H, W, C), row y filtered with ``kinds[y]``, from the
    specification: Filt(x) = Orig(x) - predictor(a = left, b = up, c = up-left), per byte, each row
    led by its filter type byte. tests/test_png16.py builds its files with it too."""
    return _scanlines(_candidates(pixels), np.asarray(kinds))


def _candidates(pixels: np.ndarray) -> np.ndarray:
    """(5, H, stride) uint8: every row of ``pixels``' big-endian bytes filtered with each type 0-4."""
    height, _, channels = pixels.shape
    raw = pixels.astype(">u2").reshape(height, -1).view(np.uint8)
    return np.stack([_filtered(raw, 2 * channels, kind) for kind in range(5)]).astype(np.uint8)


def _scanlines(candidates: np.ndarray, kinds: np.ndarray) -> bytes:
    rows = candidates[kinds, np.arange(candidates.shape[1])]
    return np.concatenate([kinds.astype(np.uint8)[:, None], rows], axis=1).tobytes()


def png_bytes(pixels: np.ndarray, filters: str) -> bytes:
    """A 16-bit RGB PNG of ``pixels`` with the rows filtered as ``filters`` says (none|paeth|adaptive)."""
    height, width, channels = pixels.shape
    candidates = _candidates(pixels)
    if filters == "adaptive":
        cost = np.abs(candidates.astype(np.int8).astype(np.int32)).sum(axis=2)  # (5, H)
        kinds = cost.argmin(axis=0)
    else:
        kinds = np.full(height, {"none": 0, "paeth": 4}[filters])
    body = _scanlines(candidates, kinds)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body, 6))
            + chunk(b"IEND", b""))


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return float(np.median(times) * 1e3)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    repeats = _REPEATS.value
    path = pathlib.Path(_IMAGE.value) if _IMAGE.value else (min(BSD200.glob("*.png")) if BSD200.is_dir() else None)
    rng = np.random.default_rng(0)
    if path is None:
        base = np.add.outer(np.arange(321), np.arange(481))[..., None] * np.array([1, 2, 3])
        eight = (base % 256).astype(np.uint16)
    else:
        eight = np.asarray(Image.open(path).convert("RGB")).astype(np.uint16)
    pixels = eight * 257 + rng.integers(0, 16, eight.shape).astype(np.uint16)  # stays <= 65535
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for filters in ("none", "paeth", "adaptive"):
            file = pathlib.Path(work) / f"{filters}.png"
            file.write_bytes(png_bytes(pixels, filters))
            assert np.array_equal(png16.decode(file), pixels), f"{filters}: png16.decode is not exact"

            def with_pillow(file: pathlib.Path = file) -> None:
                with Image.open(file) as image:
                    image.load()

            ours = median_ms(lambda file=file: png16.decode(file), repeats)
            peer = median_ms(with_pillow, repeats)
            results[filters] = {"png16_ms": round(ours, 2), "pillow_ms": round(peer, 2),
                                "ratio": round(ours / peer, 2)}
    print(json.dumps({"image": path.name if path else "generated", "size": [pixels.shape[1], pixels.shape[0]],
                      "repeats": repeats, "files": results}))


if __name__ == "__main__":
    app.run(main)
