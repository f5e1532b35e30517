"""A 3×3 convolution on two pixels packed into the channel axis, for 128-lane accelerators.

A TPU stores an array's minor (channel) dimension in 128-lane tiles, so a 64-channel feature map
is stored and moved padded to twice its size. Read ``(N, H, W, C)`` as ``(N, H, W/2, 2C)`` (a
reshape: pixel ``2w + p`` is packed column ``w``, lanes ``p·C ... p·C + C - 1``) and the same
convolution is a 3×3 convolution of the packed map with a ``(3, 3, 2C, 2K)`` kernel built from
the ``(3, 3, C, K)`` one: output pixel ``2w + q`` reads input pixel ``2(w + a - 1) + p`` through
the original kernel column ``j = 2(a - 1) + p - q + 1``, where ``0 ≤ j ≤ 2`` (the other blocks are
zero). The values are those of the direct convolution, summed in another order; the matrix unit
does twice the multiply-adds (the zero blocks), and the feature maps fill their lanes.

Between two packed convolutions (with elementwise work between them), the unpacking and
packing reshapes cancel in XLA, so a trunk of such convolutions stays packed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PACKED_MAX_CHANNELS", "packed_applies", "packed_conv3x3", "packed_kernel"]

PACKED_MAX_CHANNELS = 64
"""Packing pays where two pixels' channels fit one 128-lane tile: at most 64 in and out."""


def _selection() -> np.ndarray:
    """``S[a, p, q, j] = 1`` where packed column offset ``a - 1``, input parity ``p`` and output
    parity ``q`` reach the original kernel column ``j = 2(a - 1) + p - q + 1``."""
    s = np.zeros((3, 2, 2, 3), np.float32)
    for a in range(3):
        for p in range(2):
            for q in range(2):
                j = 2 * (a - 1) + p - q + 1
                if 0 <= j <= 2:
                    s[a, p, q, j] = 1
    return s


def packed_applies(x: jax.Array, kernel: jax.Array, stride: int) -> bool:
    """Whether the packed convolution computes this one: stride 1, an even width, and at most
    :data:`PACKED_MAX_CHANNELS` input and output channels."""
    return (stride == 1 and x.shape[-2] % 2 == 0
            and max(kernel.shape[2], kernel.shape[3]) <= PACKED_MAX_CHANNELS)


def packed_kernel(kernel: jax.Array) -> jax.Array:
    """The ``(3, 3, 2C, 2K)`` kernel of two packed pixels from a ``(3, 3, C, K)`` HWIO kernel
    (its dtype kept): block ``(p, q)`` of column ``a`` is the original column
    ``2(a - 1) + p - q + 1``, or zero."""
    _, _, c, k = kernel.shape
    blocks = jnp.einsum("apqj,hjck->hapcqk", jnp.asarray(_selection(), kernel.dtype), kernel)
    return blocks.reshape(3, 3, 2 * c, 2 * k)


def packed_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``conv3x3(x, kernel)`` (stride 1, one pixel of zero padding, no bias) on packed pixels.

    Args:
      x: ``(N, H, W, C)`` with ``W`` even.
      kernel: ``(3, 3, C, K)`` HWIO kernel, the dtype of ``x``.

    Returns:
      ``(N, H, W, K)``: XLA's convolution of the same arguments up to the rounding of the sums.
    """
    n, h, w, c = x.shape
    if w % 2:
        raise ValueError(f"the packed convolution needs an even width; got {w}")
    y = jax.lax.conv_general_dilated(
        x.reshape(n, h, w // 2, 2 * c), packed_kernel(kernel), (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(n, h, w, kernel.shape[-1])
