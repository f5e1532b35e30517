"""Valid-region masks: running a network on zero-padded images as if they were unpadded.

A batch of images of different sizes (or one image padded up to a size bucket) is stored as
one ``(B, H, W, C)`` array, each image in its top-left ``h_b × w_b`` corner. ``sizes`` is the
int32 ``(B, 2)`` array of those ``(h_b, w_b)``; it is a traced value, so one compiled program
serves every size that fits the array.

A 3×3 convolution with zero padding reads, at the border of an unpadded image, zeros. If
everything past ``(h_b, w_b)`` is zero, the padded array gives it the same zeros, so its values
inside the valid region equal the unpadded ones. Outside they are not zero (bias, and the
valid pixels' spill-over), so :func:`zero_outside` clears them after every convolution, which
keeps the invariant from layer to layer. ReLU and sums preserve it; a pixel shuffle by ``r``
maps a valid ``h × w`` region onto exactly ``r·h × r·w``; a stride-2 convolution with one
pixel of padding onto ``ceil(h/2) × ceil(w/2)`` (see :func:`scaled_sizes`).

Interpolation is different: bilinear resizing looks one pixel past the valid region, and at a
real border it treats the missing pixel as a copy of the edge one. :func:`replicate_edges`
fills the padding with those copies first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["replicate_edges", "scaled_sizes", "valid_mask", "zero_outside"]


def scaled_sizes(sizes: jax.Array, factor: int = 1, *, stride: int = 1) -> jax.Array:
    """Valid sizes after upsampling by ``factor`` and then a ``stride`` convolution.

    ``ceil(sizes · factor / stride)``: a pixel shuffle by ``r`` is ``factor=r``, a stride-2
    convolution with one pixel of padding (output pixel ``j`` centred on input ``2j``) is
    ``stride=2``.
    """
    scaled = jnp.asarray(sizes, jnp.int32) * factor
    return -(-scaled // stride) if stride > 1 else scaled


def valid_mask(shape: tuple[int, ...], sizes: jax.Array) -> jax.Array:
    """Boolean ``(B, H, W, 1)``: True at row ``< h_b`` and column ``< w_b`` of image ``b``.

    Args:
      shape: the ``(B, H, W, ...)`` shape of the batch.
      sizes: int ``(B, 2)`` valid ``(h_b, w_b)`` per image, at that batch's resolution.
    """
    sizes = jnp.asarray(sizes, jnp.int32)
    rows = jnp.arange(shape[1], dtype=jnp.int32)[None, :, None, None]
    cols = jnp.arange(shape[2], dtype=jnp.int32)[None, None, :, None]
    return (rows < sizes[:, 0, None, None, None]) & (cols < sizes[:, 1, None, None, None])


def zero_outside(x: jax.Array, sizes: jax.Array | None) -> jax.Array:
    """``x`` with every pixel outside each image's valid region set to 0 (dtype kept).

    ``sizes=None`` (one full-size image per batch entry) returns ``x`` itself, at no cost.
    """
    if sizes is None:
        return x
    return jnp.where(valid_mask(x.shape, sizes), x, jnp.zeros((), x.dtype))


def replicate_edges(x: jax.Array, sizes: jax.Array | None) -> jax.Array:
    """``x`` with the padding past each image's valid region filled by its last row and column.

    Pixel ``(r, c)`` takes the value of ``(min(r, h_b - 1), min(c, w_b - 1))``: what an
    interpolation that clamps at the border reads there. ``sizes=None`` returns ``x``.
    """
    if sizes is None:
        return x
    sizes = jnp.asarray(sizes, jnp.int32)

    def one(image: jax.Array, size: jax.Array) -> jax.Array:
        rows = jnp.minimum(jnp.arange(image.shape[0]), size[0] - 1)
        cols = jnp.minimum(jnp.arange(image.shape[1]), size[1] - 1)
        return image[rows][:, cols]

    return jax.vmap(one)(x, sizes)
