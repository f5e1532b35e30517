"""DRN's 3×3 convolution with an explicit choice of algorithm, and the pixel shuffle.

:func:`conv3x3` computes ``pixel_shuffle(conv(x, kernel) + bias, shuffle)`` for a 3×3 kernel with
one pixel of zero padding per side (PyTorch's ``padding=1``), by one of

* XLA's convolution, ``jax.lax.conv_general_dilated`` (the backend-neutral one);
* Winograd F(4×4, 3×3), :func:`drn_jax.ops.winograd.winograd_conv3x3`, for float32 stride-1
  convolutions with at least 16 input and output channels;
* one matrix product and a shifted sum, :func:`drn_jax.ops.winograd.shifted_sum_conv3x3`, for
  float32 stride-1 convolutions from at least 16 to fewer channels (the RGB outputs).

The ``algorithm`` argument (one of :data:`CONV_ALGORITHMS`) says which may be used:

``"auto"``
  Winograd / shifted sum where they apply on the CPU backend (where they are 2-5× faster than
  XLA's convolution), XLA's convolution elsewhere and on other backends.
``"winograd"``
  Winograd / shifted sum wherever dtype, stride and channels allow, on any backend.
``"xla"``
  Always XLA's convolution.

All three give the same values up to float32 rounding (see :mod:`drn_jax.ops.winograd`). The
choice is made from static shapes, dtypes and the default backend when the function is traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from drn_jax.ops.winograd import WINOGRAD_MIN_CHANNELS, shifted_sum_conv3x3, winograd_conv3x3

__all__ = ["CONV_ALGORITHMS", "check_conv_algorithm", "conv3x3", "conv3x3_path", "pixel_shuffle"]

CONV_ALGORITHMS = ("auto", "winograd", "xla")
"""The values of :func:`conv3x3`'s ``algorithm`` (and of the DRN modules' ``conv`` attribute)."""


def pixel_shuffle(x: jax.Array, factor: int = 2) -> jax.Array:
    """Sub-pixel rearrangement (depth to space), channels-last, in PyTorch's channel order.

    ``(..., H, W, C·r·r) -> (..., H·r, W·r, C)`` with ``r = factor`` and
    ``out[..., h·r + i, w·r + j, c] = x[..., h, w, c·r·r + i·r + j]``: the ``r·r`` sub-pixels
    of an output channel are consecutive input channels, as in ``torch.nn.PixelShuffle`` (so
    PyTorch DRN weights port by transposing kernels only). ``tf.nn.depth_to_space`` uses the
    other order, ``(i·r + j)·C + c``.

    Args:
      x: array of shape ``(..., H, W, C·r·r)``; any dtype.
      factor: the upscaling factor ``r``.

    Returns:
      Array of shape ``(..., H·r, W·r, C)`` and the dtype of ``x``.
    """
    *lead, height, width, depth = x.shape
    if depth % (factor * factor):
        raise ValueError(f"channels ({depth}) must be a multiple of factor**2 ({factor**2})")
    channels = depth // (factor * factor)
    n = len(lead)
    x = x.reshape(*lead, height, width, channels, factor, factor)
    # (..., H, W, C, i, j) -> (..., H, i, W, j, C)
    x = x.transpose(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*lead, height * factor, width * factor, channels)


def check_conv_algorithm(algorithm: str, name: str = "algorithm") -> str:
    """``algorithm`` if it is one of :data:`CONV_ALGORITHMS`, else ``ValueError`` naming them."""
    if algorithm not in CONV_ALGORITHMS:
        allowed = ", ".join(map(repr, CONV_ALGORITHMS))
        raise ValueError(f"{name} must be one of {allowed}; got {algorithm!r}")
    return algorithm


def _cpu_float32_stride1(x: jax.Array, kernel: jax.Array, stride: int, algorithm: str) -> bool:
    if algorithm == "xla" or stride != 1:
        return False
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        return False  # the Winograd transforms' sums of up to 16 terms (×25) need float32
    return algorithm == "winograd" or jax.default_backend() == "cpu"


def conv3x3_path(x: jax.Array, kernel: jax.Array, stride: int = 1, algorithm: str = "auto") -> str:
    """Which computation :func:`conv3x3` uses for these arguments: ``"winograd"``,
    ``"shifted_sum"`` or ``"xla"`` (decided from shapes, dtypes and the default backend)."""
    check_conv_algorithm(algorithm)
    channels_in, channels_out = kernel.shape[2], kernel.shape[3]
    if channels_in < WINOGRAD_MIN_CHANNELS:
        return "xla"
    if not _cpu_float32_stride1(x, kernel, stride, algorithm):
        return "xla"
    return "winograd" if channels_out >= WINOGRAD_MIN_CHANNELS else "shifted_sum"


def conv3x3(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: int = 1,
    shuffle: int = 1,
    algorithm: str = "auto",
) -> jax.Array:
    """``pixel_shuffle(conv3x3(x, kernel, stride) + bias, shuffle)``, by the chosen algorithm.

    A 3×3 cross-correlation with one pixel of zero padding per side, NHWC / HWIO. With stride 2
    the output has ``ceil(H/2) × ceil(W/2)`` pixels and output pixel ``j`` is centred on input
    pixel ``2j``, as PyTorch's ``Conv2d(stride=2, padding=1)``.

    Args:
      x: ``(N, H, W, C)`` input.
      kernel: ``(3, 3, C, K)`` kernel, the dtype of ``x``.
      bias: ``(K,)`` bias, or ``None`` for none.
      stride: 1 or 2 (any positive stride; only 1 can use Winograd / the shifted sum).
      shuffle: the pixel-shuffle factor ``r`` applied after the bias (1: none); ``K`` must be
        a multiple of ``r²``. The Winograd path does it in its output transform.
      algorithm: one of :data:`CONV_ALGORITHMS` (see the module docstring).

    Returns:
      ``(N, H'·r, W'·r, K/r²)`` with ``H' = ceil(H/stride)``, ``W' = ceil(W/stride)``.

    Raises:
      ValueError: ``algorithm`` is not one of :data:`CONV_ALGORITHMS`.
    """
    path = conv3x3_path(x, kernel, stride, algorithm)
    if path == "winograd":
        if bias is None:
            bias = jnp.zeros((kernel.shape[-1],), x.dtype)
        return winograd_conv3x3(x, kernel, bias, shuffle)
    if path == "shifted_sum":
        y = shifted_sum_conv3x3(x, kernel)
    else:
        y = jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    if bias is not None:
        y = y + bias
    return pixel_shuffle(y, shuffle) if shuffle > 1 else y
