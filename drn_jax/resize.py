"""MATLAB ``imresize(..., 'bicubic')`` in ``jax.numpy``: the only bicubic resampler of drn-jax.

It reproduces MATLAB's ``imresize.m`` bit for bit on 8-bit images, so that the LR pyramid,
evaluation and the bicubic baseline resample as the published numbers did. :func:`imresize`
is jitted; :func:`imresize_host` is the same passes in float64 NumPy.

How it works: docs/internals.md#the-bicubic-resampler.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "contributions",
    "cubic",
    "imresize",
    "imresize_host",
    "modcrop",
    "output_shape",
    "resize_matrix",
]

_KERNEL_WIDTH = 4.0  # support of the Keys cubic kernel, in input samples
_LEVELS = 255.0  # the white level of 8-bit images

ArrayT = TypeVar("ArrayT", np.ndarray, jax.Array)


def cubic(x: np.ndarray) -> np.ndarray:
    """The Keys cubic convolution kernel with ``a = -0.5`` (MATLAB ``imresize``'s ``cubic``).

    ``1.5|x|^3 - 2.5|x|^2 + 1`` for ``|x| <= 1``, ``-0.5|x|^3 + 2.5|x|^2 - 4|x| + 2`` for
    ``1 < |x| <= 2``, and 0 beyond. Float64 NumPy, element-wise.
    """
    absx = np.abs(np.asarray(x, dtype=np.float64))
    absx2 = absx * absx
    absx3 = absx2 * absx
    near = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1.0)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1.0) & (absx <= 2.0))
    return near + far


def output_shape(in_hw: Sequence[int], scale: float) -> tuple[int, int]:
    """MATLAB's output size for ``imresize(A, scale)``: ``ceil(scale * [H, W])``.

    The product is taken in float64 exactly as MATLAB does (so, like MATLAB,
    ``output_shape((250, 361), 1/3) == (84, 121)``).

    Args:
      in_hw: ``(H, W)`` of the input.
      scale: positive scale factor, the same for both axes.

    Returns:
      ``(out_H, out_W)`` as Python ints.
    """
    _check_scale(scale)
    height, width = in_hw
    return int(math.ceil(scale * height)), int(math.ceil(scale * width))


def contributions(
    in_len: int, out_len: int, scale: float, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``imresize``'s ``contributions()`` for the bicubic kernel, along one axis.

    Follows MATLAB step by step: the stretched kernel when shrinking with antialiasing,
    ``u = x/scale + 0.5*(1 - 1/scale)`` for output ``x = 1..out_len``, the
    ``P = ceil(kernel_width) + 2`` candidate inputs from ``floor(u - kernel_width/2)`` on,
    weights normalised to sum 1 per row, out-of-range indices folded by
    ``aux = [1..in, in..1]`` (a mirror that repeats the edge sample), and columns whose weights
    are all zero dropped.

    Args:
      in_len: input length along the axis.
      out_len: output length along the axis.
      scale: ``out/in`` scale factor used for the kernel and positions (MATLAB uses the given
        scale, not ``out_len/in_len``, when the caller gave a scale).
      antialias: stretch the kernel when shrinking (MATLAB's default, ``'Antialiasing', true``).

    Returns:
      ``(weights, indices)``, both ``(out_len, K)``: float64 weights whose rows sum to 1 and
      the matching **0-based** input indices (all within ``[0, in_len)``; an index may repeat
      within a row near a border).
    """
    _check_scale(scale)
    if in_len < 1 or out_len < 1:
        raise ValueError(f"lengths must be positive; got in_len={in_len}, out_len={out_len}")
    if scale < 1.0 and antialias:
        # A low-pass filter whose cutoff follows the new sampling rate.
        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * x)

        kernel_width = _KERNEL_WIDTH / scale
    else:
        kernel, kernel_width = cubic, _KERNEL_WIDTH

    x = np.arange(1, out_len + 1, dtype=np.float64)  # 1-based, as in MATLAB
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # input coordinate of each output sample
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)

    mirror = np.concatenate([np.arange(1, in_len + 1), np.arange(in_len, 0, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, mirror.size)]

    keep = np.any(weights != 0.0, axis=0)
    return weights[:, keep], indices[:, keep] - 1


@functools.lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The dense ``(out_len, in_len)`` float64 matrix of one bicubic pass: ``out = M @ in``.

    ``M[i, j]`` is the sum of the :func:`contributions` weights of output ``i`` on input ``j``
    (repeated mirror indices accumulate). Rows sum to 1. Cached; the returned array is
    read-only because the cache shares it.
    """
    weights, indices = contributions(in_len, out_len, scale, antialias)
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], indices.shape)
    np.add.at(matrix, (rows, indices), weights)
    matrix.setflags(write=False)
    return matrix


def modcrop(image: ArrayT, scale: int) -> ArrayT:
    """Crops height and width down to multiples of ``scale``, keeping the top-left corner.

    The community's ``img[:H - H % s, :W - W % s]`` (e.g. a 250x361 image at x3 becomes
    249x360), applied to the ``H`` and ``W`` axes of ``(..., H, W, C)``. Works on NumPy and JAX
    arrays and returns the same kind.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer; got {scale!r}")
    scale = int(scale)
    if image.ndim < 3:
        raise ValueError(f"image must have shape (..., H, W, C); got shape {image.shape}")
    height, width = image.shape[-3], image.shape[-2]
    return image[..., : height - height % scale, : width - width % scale, :]


def _check_scale(scale: float) -> None:
    if not (isinstance(scale, (int, float, np.integer, np.floating)) and scale > 0
            and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number; got {scale!r}")


def _round_to_levels(x, xp=jnp):
    # MATLAB's double -> uint8 conversion: saturate, then round half away from zero (inputs are
    # non-negative after the clip, so floor(x + 0.5) is exactly that).
    return xp.floor(xp.clip(x, 0.0, _LEVELS) + 0.5)


def _imresize(images, scale, output_size, antialias, quantize, xp):
    """:func:`imresize` on the array module ``xp``: ``jnp`` (float32, traced) or ``np`` (float64)."""
    images = xp.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"images must have shape (..., H, W, C); got shape {images.shape}")
    is_uint8 = images.dtype == np.uint8
    if not is_uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images must be uint8 or floating point; got {images.dtype}")
    if quantize and is_uint8:
        raise TypeError("quantize=True is for float images; uint8 input is always quantised")

    in_hw = (images.shape[-3], images.shape[-2])
    if (scale is None) == (output_size is None):
        raise ValueError("give exactly one of scale and output_size")
    if scale is not None:
        out_hw = output_shape(in_hw, scale)
        scales = (float(scale), float(scale))
    else:
        out_hw = (int(output_size[0]), int(output_size[1]))
        if min(out_hw) < 1:
            raise ValueError(f"output_size must be positive; got {output_size}")
        scales = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])

    levels = is_uint8 or quantize
    compute = np.float64 if xp is np else jnp.float32
    x = images.astype(compute)
    if quantize:
        x = x * _LEVELS  # work in 0-255 units so rounding matches the uint8 path

    # MATLAB resizes the dimension with the smaller scale first (fewer rows to carry along
    # when shrinking); the result differs from the other order only through rounding.
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    for axis in order:
        matrix = xp.asarray(resize_matrix(in_hw[axis], out_hw[axis], scales[axis], antialias), compute)
        spec = "oh,...hwc->...owc" if axis == 0 else "ow,...hwc->...hoc"
        if xp is np:
            x = np.einsum(spec, matrix, x, optimize=True)  # BLAS, float64
        else:
            x = jnp.einsum(spec, matrix, x, precision=jax.lax.Precision.HIGHEST)
        if levels:
            x = _round_to_levels(x, xp)

    if is_uint8:
        return x.astype(np.uint8)
    if quantize:
        x = x / _LEVELS
    return x.astype(images.dtype)


def imresize_host(
    images: np.ndarray,
    scale: float | None = None,
    *,
    output_size: tuple[int, int] | None = None,
    antialias: bool = True,
    quantize: bool = False,
) -> np.ndarray:
    """:func:`imresize` computed in float64 NumPy on the host: no compilation, any shape.

    The same arguments, passes, rounding and errors as :func:`imresize`; returns a NumPy array
    of the input's dtype. uint8 results equal :func:`imresize`'s except where float32 rounding
    moves a value across an exact ``.5`` tie (float64 is what MATLAB computes in).
    """
    return _imresize(np.asarray(images), scale, output_size, antialias, quantize, np)


@functools.partial(jax.jit, static_argnames=("scale", "output_size", "antialias", "quantize"))
def imresize(
    images: jax.Array,
    scale: float | None = None,
    *,
    output_size: tuple[int, int] | None = None,
    antialias: bool = True,
    quantize: bool = False,
) -> jax.Array:
    """MATLAB ``imresize(images, scale, 'bicubic')`` (or ``imresize(images, [H W], 'bicubic')``).

    Reproduces MATLAB's bicubic resize (see the module docstring): Keys kernel ``a = -0.5``,
    kernel stretched by ``1/scale`` when shrinking, output size ``ceil(scale * in)``, MATLAB's
    sample positions, normalised weights, mirror borders, the smaller-scale axis first (ties:
    height first).

    Jitted; ``scale``, ``output_size``, ``antialias`` and ``quantize`` are static.

    Args:
      images: ``(..., H, W, C)``: any number of leading batch axes, channels last. ``uint8``
        (0-255) or floating point (any range; ``[0, 1]`` when ``quantize``).
      scale: positive scale factor for both axes (``1/4`` shrinks, ``4`` enlarges; non-integer
        factors allowed). Output size ``ceil(scale * (H, W))`` (:func:`output_shape`).
      output_size: ``(out_H, out_W)`` instead of ``scale``; each axis then uses the scale
        ``out/in`` (as MATLAB does). Give exactly one of ``scale`` and ``output_size``.
      antialias: stretch the kernel when shrinking (MATLAB's default ``true``).
      quantize: float input only: treat the image as 8-bit data in ``[0, 1]`` units, i.e. do
        what the ``uint8`` path does (round to the nearest of 256 levels and clip to
        ``[0, 1]`` after each pass, MATLAB rounding) and return floats on that grid. For
        ``u8`` data, ``imresize(u8 / 255, s, quantize=True) * 255 == imresize(u8, s)`` except
        where a float32 error moves a value across an exact ``.5`` rounding tie.

    Returns:
      ``(..., out_H, out_W, C)``. ``uint8`` input: ``uint8`` output, each pass computed in
      float32, rounded half away from zero and saturated (MATLAB ``imresizemex``). Float input:
      same float dtype, computed in float32, no clipping (MATLAB does not clip doubles either;
      bicubic over- and undershoots) unless ``quantize``.

    Raises:
      ValueError: not exactly one of ``scale``/``output_size``, a non-positive size or scale, or
        fewer than 3 dimensions.
      TypeError: an integer dtype other than ``uint8``, or ``quantize`` with ``uint8`` input.
    """
    return _imresize(images, scale, output_size, antialias, quantize, jnp)
