"""JPEG frame headers and crop plans in NumPy: what the TFDS stream decodes of each record.

A block of records is planned in one call (`plan_block`): each JPEG's size comes from its
frame header (`jpeg_size`), its crop windows from `crops.windows_from_words`, and only the
rectangle around them is decoded. The plans are bit-exact: the crops equal `crops.crop` of
the fully decoded image (tests/test_tfds_jpeg.py).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from drn_jax.data import crops

__all__ = ["BlockPlan", "CropPlan", "HEADER", "HEADER_BYTES", "JPEG_START", "MARGIN", "SMALL",
           "WHOLE", "WINDOW", "block_plan_shapes", "jpeg_size", "plan_block", "plan_crops"]

# Decoded pixels around the crop windows: JPEG's fancy upsampling blends each pixel's
# chroma with the neighbouring chroma sample, which for 2x subsampled chroma lies up to 2
# pixels away; decoded without it, a window's edge pixels would differ from a full decode.
MARGIN = 2
# Bytes of each record that a block's planning reads for a JPEG's frame header: enough for
# JFIF headers and most EXIF and ICC segments, and cheap to copy (a JPEG whose header lies
# further in is planned on its own, `HEADER`, with the same crops).
HEADER_BYTES = 4096
# How a record is decoded: its windows planned with its block (WINDOW); a JPEG planned from
# its own header (HEADER); decoded whole, then planned (WHOLE: PNG, BMP, GIF); or left out,
# too small by its header (SMALL).
WINDOW, HEADER, WHOLE, SMALL = 0, 1, 2, 3
# The first bytes of every JPEG file (start of image, then a marker), as libjpeg and
# tf.io.is_jpeg recognise one.
JPEG_START = b"\xff\xd8\xff"
# Frame-header (SOFn) markers: C0-CF but DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the frame header of JPEG bytes (the first ``n`` bytes of a
    file are enough when they hold it), as libjpeg reads it; None when ``data`` is not a
    JPEG or its frame header is not in ``data``."""
    if not data.startswith(JPEG_START):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in (0xD9, 0xDA):  # end of image, or scan data, before any frame header
            return None
        elif marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height, width = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            return (height, width) if height and width else None
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


class CropPlan(NamedTuple):
    """How to cut the K crops of n records out of their decoded rectangles.

    Attributes:
      rectangles: int32 (n, 4), ``[top, left, rows, columns]`` to decode: the record's K
        windows and `MARGIN` pixels around them.
      corners: int32 (n, K, 2), each window's top-left pixel inside its rectangle.
      transforms: int32 (n, K), each crop's dihedral transform (`crops.dihedral`).
    """

    rectangles: np.ndarray
    corners: np.ndarray
    transforms: np.ndarray


def plan_crops(sizes: np.ndarray, words: np.ndarray, patch: int) -> CropPlan:
    """The crops of records whose images have ``sizes`` (n, 2), each >= ``patch``, from their
    `crops.window_words` (n, K, 3)."""
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    tops, lefts, transforms = crops.windows_from_words(words, sizes[:, None, :], patch)
    top = np.maximum(0, tops.min(1) - MARGIN)
    left = np.maximum(0, lefts.min(1) - MARGIN)
    bottom = np.minimum(sizes[:, 0], tops.max(1) + patch + MARGIN)
    right = np.minimum(sizes[:, 1], lefts.max(1) + patch + MARGIN)
    rectangles = np.stack([top, left, bottom - top, right - left], 1).astype(np.int32)
    corners = np.stack([tops - top[:, None], lefts - left[:, None]], -1).astype(np.int32)
    return CropPlan(rectangles, corners, transforms.astype(np.int32))


class BlockPlan(NamedTuple):
    """A block's records to decode, in stream order, and how (n records, K crops each).

    Attributes:
      order: int64 (n,), each record's index among the block's stored records.
      positions: int64 (n,), its record position in the stream.
      kinds: int32 (n,), `WINDOW`, `HEADER`, `WHOLE` or `SMALL`.
      rectangles, corners, transforms: its `CropPlan` (only used for `WINDOW` records: the
        others are planned once their size is known).
      words: uint64 (n, K, 3), the crops' `crops.window_words`.
    """

    order: np.ndarray
    positions: np.ndarray
    kinds: np.ndarray
    rectangles: np.ndarray
    corners: np.ndarray
    transforms: np.ndarray
    words: np.ndarray


BLOCK_PLAN_DTYPES = BlockPlan(np.int64, np.int64, np.int32, np.int32, np.int32, np.int32, np.uint64)
"""The dtype of each `BlockPlan` field."""


def block_plan_shapes(per_image: int) -> BlockPlan:
    """The shape of each `BlockPlan` field, ``None`` for the number of records."""
    return BlockPlan([None], [None], [None], [None, 4], [None, per_image, 2], [None, per_image],
                     [None, per_image, 3])


def plan_block(headers: np.ndarray, order: np.ndarray, first_position: int, *, per_image: int,
               crop_key: int, patch: int) -> BlockPlan:
    """Plans the records ``order`` (indices into ``headers``, in stream order) of one block.

    Args:
      headers: object (m,), each stored record's first `HEADER_BYTES` bytes.
      order: int (n,), the records to plan, in stream order.
      first_position: the record position of ``order[0]``; the rest follow one by one.
      per_image: K, the crops per record; crop ``k`` of record position ``p`` has crop
        position ``p * K + k``.
      crop_key: the stream's crop key (`crops.window_words`).
      patch: the crop side.
    """
    order = np.asarray(order, np.int64)
    positions = first_position + np.arange(len(order), dtype=np.int64)
    words = crops.window_words(crop_key, positions[:, None] * per_image + np.arange(per_image))
    sizes = np.full((len(order), 2), patch, np.int64)
    kinds = np.empty(len(order), np.int32)
    for i, stored in enumerate(order):
        header = headers[stored]
        size = jpeg_size(header)
        if size is not None:
            sizes[i] = size
            kinds[i] = WINDOW if min(size) >= patch else SMALL
        else:
            kinds[i] = HEADER if header.startswith(JPEG_START) else WHOLE
    # Records not planned here get some plan of a patch-sized image: it is not used.
    plan = plan_crops(sizes.clip(patch), words, patch)
    return BlockPlan(order, positions, kinds, *plan, words)
