"""DRN's 3×3 convolution with an explicit choice of algorithm, and the pixel shuffle.

:func:`conv3x3` computes ``pixel_shuffle(conv(x, kernel) + bias, shuffle)`` (PyTorch's
``padding=1``) by XLA's convolution, Winograd F(4×4, 3×3), a shifted sum or packed lanes,
as :data:`CONV_ALGORITHMS` names them; all give the same values up to float32 rounding.

How it works: docs/internals.md#convolution-algorithms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from drn_jax.ops.packed import packed_applies, packed_conv3x3
from drn_jax.ops.winograd import WINOGRAD_MIN_CHANNELS, shifted_sum_conv3x3, winograd_conv3x3

__all__ = ["CONV_ALGORITHMS", "CPU_INFERENCE_WINOGRAD_MIN_FEATURES", "check_conv_algorithm", "conv3x3",
           "conv3x3_path", "pixel_shuffle", "resolve_conv_algorithm"]

CONV_ALGORITHMS = ("auto", "winograd", "xla", "packed")
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


CPU_INFERENCE_WINOGRAD_MIN_FEATURES = 64
"""On a CPU, DRN inference is faster with Winograd from this feature width F on, with XLA's
convolution below it; training is faster with Winograd at every width measured
(``benchmarks/conv_choice.py``, figures in docs/performance.md)."""


def resolve_conv_algorithm(algorithm: str, *, platform: str, features: int, training: bool) -> str:
    """The concrete algorithm, ``"winograd"`` or ``"xla"``, that a DRN's ``conv`` of ``algorithm``
    stands for when compiled for `platform`; any other algorithm comes back unchanged.

    ``"auto"`` gives XLA's convolution for every platform but ``"cpu"`` (``"tpu"``, ``"gpu"``,
    ``"cuda"``, ...: the vendors' convolutions beat the Winograd kernels written for a CPU).
    For ``"cpu"`` it gives the one measured faster (``benchmarks/conv_choice.py``): Winograd
    for training (XLA's kernel gradient is ~5× its forward pass there), and for inference of
    networks of at least :data:`CPU_INFERENCE_WINOGRAD_MIN_FEATURES` features; XLA's
    convolution for inference of narrower ones, whose thin matrix products do not pay for the
    Winograd transforms.

    Args:
      algorithm: one of :data:`CONV_ALGORITHMS`.
      platform: the platform of the devices the program is compiled for, as
        ``jax.Device.platform`` or ``jax.default_backend()`` name it (``"cpu"``, ``"tpu"``,
        ``"gpu"``), or a lowering platform (``"cuda"``, ``"rocm"``).
      features: the DRN's feature width F.
      training: whether the program is a training step (forward and backward) rather than
        inference (forward only).
    """
    check_conv_algorithm(algorithm)
    if algorithm != "auto":
        return algorithm
    if platform.lower() != "cpu":
        return "xla"
    if training or features >= CPU_INFERENCE_WINOGRAD_MIN_FEATURES:
        return "winograd"
    return "xla"


def _winograd_applies(x: jax.Array, kernel: jax.Array, stride: int) -> bool:
    """Whether Winograd / the shifted sum can compute this convolution at all."""
    if stride != 1 or kernel.shape[2] < WINOGRAD_MIN_CHANNELS:
        return False
    return x.dtype == jnp.float32 and kernel.dtype == jnp.float32  # the transforms' sums need float32


def conv3x3_path(x: jax.Array, kernel: jax.Array, stride: int = 1, algorithm: str = "auto",
                 platform: str | None = None) -> str:
    """Which computation :func:`conv3x3` uses for these arguments: ``"winograd"``,
    ``"shifted_sum"``, ``"packed"`` or ``"xla"``, decided from shapes, dtypes and, for ``"auto"``,
    the `platform` the program is compiled for (default: ``jax.default_backend()``)."""
    check_conv_algorithm(algorithm)
    if algorithm == "packed":
        return "packed" if packed_applies(x, kernel, stride) else "xla"
    if algorithm == "xla" or not _winograd_applies(x, kernel, stride):
        return "xla"
    if algorithm == "auto" and (platform or jax.default_backend()).lower() != "cpu":
        return "xla"
    return "winograd" if kernel.shape[3] >= WINOGRAD_MIN_CHANNELS else "shifted_sum"


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
    check_conv_algorithm(algorithm)
    if algorithm == "auto" and _winograd_applies(x, kernel, stride):
        # Chosen when the program is lowered, for the platform it is compiled for; only the
        # chosen branch is lowered.
        return jax.lax.platform_dependent(
            x, kernel, bias,
            cpu=lambda *args: _conv3x3(*args, stride=stride, shuffle=shuffle, path=conv3x3_path(
                x, kernel, stride, "winograd")),
            default=lambda *args: _conv3x3(*args, stride=stride, shuffle=shuffle, path="xla"))
    return _conv3x3(x, kernel, bias, stride=stride, shuffle=shuffle,
                    path=conv3x3_path(x, kernel, stride, algorithm))


def _conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, stride: int, shuffle: int,
             path: str) -> jax.Array:
    if path == "winograd":
        if bias is None:
            bias = jnp.zeros((kernel.shape[-1],), x.dtype)
        return winograd_conv3x3(x, kernel, bias, shuffle)
    if path == "shifted_sum":
        y = shifted_sum_conv3x3(x, kernel)
    elif path == "packed":
        y = packed_conv3x3(x, kernel)
    else:
        y = jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    if bias is not None:
        y = y + bias
    return pixel_shuffle(y, shuffle) if shuffle > 1 else y
