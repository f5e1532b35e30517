"""The one random crop, and the one image order, of every data source (NumPy).

Stateless: a pure function of a key and a counter, so any position of a stream can be made
without the ones before it (exact resuming, any thread).

How it works: docs/internals.md#crops-and-image-order.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

NUM_TRANSFORMS = 8


def crop_window(key: int, position: int, height: int, width: int,
                patch: int) -> tuple[int, int, int]:
    """(top, left, transform in [0, 8)) of the crop at ``position`` of an image.

    Args:
      key: a non-negative int below 2**64 (the stream's crop key).
      position: the crop's position in the stream, >= 0.
      height, width: the image's size; both >= ``patch``.
      patch: side of the square window.
    """
    words = _words(key, position)
    top = words[0] % (height - patch + 1)
    left = words[1] % (width - patch + 1)
    return top, left, words[2] % NUM_TRANSFORMS


def window_words(key: int, positions: np.ndarray) -> np.ndarray:
    """The three random words of `crop_window` for each position, uint64 (..., 3).

    ``crop_window`` is ``(w0 % (height - patch + 1), w1 % (width - patch + 1), w2 % 8)``
    of them (`windows_from_words`); the TFDS stream draws the words for a block of
    positions at once, and reduces them once the images' sizes are known.
    """
    positions = np.asarray(positions, np.int64)
    flat = [_words(key, int(p)) for p in positions.reshape(-1)]
    return np.array(flat, np.uint64).reshape(positions.shape + (3,))


def windows_from_words(words: np.ndarray, sizes: np.ndarray, patch: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`crop_window` of many crops at once, from their `window_words`.

    Args:
      words: uint64 (..., 3), `window_words` of the crops' positions.
      sizes: integer (..., 2), (height, width) of each crop's image, both >= ``patch``
        (broadcast against ``words[..., 0]``).
      patch: side of the square window.

    Returns:
      (tops, lefts, transforms), int64 (...,): ``crop_window`` of every crop.
    """
    words = np.asarray(words, np.uint64)
    spans = np.asarray(sizes, np.int64) - patch + 1
    tops = words[..., 0] % spans[..., 0].astype(np.uint64)
    lefts = words[..., 1] % spans[..., 1].astype(np.uint64)
    transforms = words[..., 2] % np.uint64(NUM_TRANSFORMS)
    return tops.astype(np.int64), lefts.astype(np.int64), transforms.astype(np.int64)


def _words(key: int, position: int) -> tuple[int, int, int]:
    digest = hashlib.blake2b(struct.pack("<QQ", key, position), digest_size=24).digest()
    return struct.unpack("<3Q", digest)


def dihedral(pixels: np.ndarray, transform: int) -> np.ndarray:
    """A view of (H, W, ...) ``pixels`` rotated by ``transform % 4`` quarter turns
    counter-clockwise, then flipped left-right when ``transform >= 4``."""
    pixels = np.rot90(pixels, transform % 4)
    return pixels[:, ::-1] if transform >= 4 else pixels


def crop(image: np.ndarray, key: int, position: int, patch: int,
         out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The crop at ``position``: a window of ``image`` (`crop_window`) and its transform.

    Args:
      image: (H, W, C) with H, W >= ``patch``.
      key, position: as for `crop_window`.
      patch: side of the crop.
      out: where to write the window, (patch, patch, C) of ``image``'s dtype; None: a new
        array.

    Returns:
      (``out`` or the new array, holding the window untransformed; the transform in
      [0, 8)). ``dihedral(*crop(...))`` is the training crop.
    """
    height, width = image.shape[:2]
    top, left, transform = crop_window(key, position, height, width, patch)
    window = image[top:top + patch, left:left + patch]
    if out is None:
        return window.copy(), transform
    out[...] = window
    return out, transform


def permutation(key: int, counter: int, n: int) -> np.ndarray:
    """A pseudo-random permutation of ``range(n)``, int64, keyed by (key, counter).

    ``argsort`` of ``np.random.Philox(key=[key, counter]).random_raw(n)`` (stable, so
    equal words, which are vanishingly rare, keep their index order).
    """
    words = np.random.Philox(key=[key, counter]).random_raw(n)
    return np.argsort(words, kind="stable").astype(np.int64, copy=False)
