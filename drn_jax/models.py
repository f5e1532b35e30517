"""The DRN network (Guo et al., arXiv 1809.07099, Section 4.2) in Flax linen.

Layout (METHOD.md "Network"; the same as the PyTorch peer ``shared/peers/torch_drn.py``)::

    LR (B, H, W, 3) --head conv3x3 3->F--> f_0                       (inside primal block 0)
    primal block i = 0 .. S-1, S = log2(scale), features at H·2^i × W·2^i:
        f_i -> R × ResidualModule -> conv3x3 F->4F -> pixel_shuffle(×2)   => f_{i+1}
        f_{i+1} -> to_rgb conv3x3 F->3                                   => image Î_i
    dual block i:  Î_i -> conv3x3 stride 2 (3->F) -> ReLU -> conv3x3 F->3 => D_i(Î_i)
                   (at level i-1's resolution; level -1 is the LR input)

Features, not images, flow from block to block; each block's image is a side output. The dual
blocks are a training-time constraint: :meth:`DRN.upscale` skips them.

Every convolution is 3×3 with bias and stride 1 unless stated, zero padding of one pixel on
each side ("SAME" for stride 1). On CPU most of them are computed by the Winograd algorithm,
which equals the direct convolution up to float32 rounding (see :func:`conv3x3`). The stride-2
dual convolution also pads one pixel on each side, as PyTorch's ``padding=1``: its output has
``ceil(H/2) × ceil(W/2)`` pixels (exactly ``H/2`` for even ``H``) and output pixel ``j`` is
centred on input pixel ``2j``. (XLA's "SAME" would pad
only at the bottom/right for even sizes, shifting the sampling grid against PyTorch's.)

Initialisation: kernels use ``variance_scaling(1/3, "fan_in", "uniform")``, i.e. ``U(-b, b)``
with ``b = 1/sqrt(9·C_in)``, which is exactly PyTorch's default ``Conv2d`` kernel init
(``kaiming_uniform_(a=sqrt(5))``), the init EDSR-style residual SR nets without batch norm are
usually trained with; its variance is a third of Flax's default ``lecun_normal``, which keeps
the identity-skip stack of 2·R residual convolutions from inflating the activations. Biases
start at zero (PyTorch draws them uniformly; zero is the Flax convention and irrelevant in
practice).

Inputs are NHWC float images in [0, 1]; outputs are float32 in roughly the same range (not
clipped: clipping belongs to evaluation, and would zero the loss gradient of saturated pixels).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SCALES",
    "DRN",
    "DRNOutputs",
    "DualBlock",
    "PrimalBlock",
    "ResidualModule",
    "count_params",
    "default_kernel_init",
    "expected_param_count",
    "num_levels",
    "pixel_shuffle",
]

SCALES = (2, 4, 8)
"""Upscaling factors DRN supports: one primal block per factor of 2."""

IMAGE_CHANNELS = 3

Dtype = Any

default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""PyTorch's default conv kernel init, ``U(±1/sqrt(fan_in))``; see the module docstring."""


def num_levels(scale: int) -> int:
    """Number of primal (and dual) blocks ``S = log2(scale)`` for ``scale`` in ``SCALES``.

    Raises:
      ValueError: ``scale`` is not 2, 4 or 8.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}; got {scale!r}")
    return int(round(math.log2(scale)))


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


# ----------------------------------------------------------------------------------------------
# 3×3 convolutions: XLA's direct convolution, or Winograd F(4×4, 3×3) on CPU
# ----------------------------------------------------------------------------------------------
#
# On CPU, XLA runs convolutions as direct convolutions (YNNPACK) and computes the kernel gradient
# as a "convolution" with a 48×48 window, about 5× slower than the forward pass; DRN's cost is
# almost all 3×3 convolutions with 64 (or 256) channels. On CPU those use the Winograd algorithm
# F(4×4, 3×3) (Lavin & Gray 2016) instead: every 6×6 input tile (stride 4) and the kernel are
# transformed, multiplied in 36 independent (tiles × C_in) @ (C_in × C_out) matrix products, and
# transformed back to 4×4 output tiles, 4× fewer multiplications than the direct convolution. The
# backward pass is matrix products and the transposed transforms (custom VJPs below: autodiff of
# the strided tile slicing would scatter through padded copies). The upsampling convolution's
# pixel shuffle and bias are folded into its output transform. Results equal the direct
# convolution up to float32 rounding: against a float64 reference the activations' error is ~3×
# and the parameter gradients' (median) ~25× that of XLA's float32 convolution, ~1e-6 relative.
# Convolutions to fewer than 16 channels (the RGB outputs) are one matrix product and a shifted
# sum instead (:func:`_shifted_sum_conv3x3`); from few channels, strided, non-float32, and on
# other backends they use XLA's convolution. ``DRN_JAX_CONV=direct`` in the environment turns
# both off (``winograd`` forces them on any backend); it is read when a model is traced.

_CONV_ALGORITHMS = ("auto", "direct", "winograd")
_WINOGRAD_MIN_CHANNELS = 16  # below this the matrix products are too thin to pay for transforms

# F(4×4, 3×3) with interpolation points 0, ±1, ±2, ∞ (the standard choice, e.g. cuDNN, NNPACK).
_WINO_M = 4  # output tile side
_WINO_A = 6  # input tile side, m + r - 1
_WINO_BT = (  # input transform B^T (6×6)
    (4.0, 0.0, -5.0, 0.0, 1.0, 0.0),
    (0.0, -4.0, -4.0, 1.0, 1.0, 0.0),
    (0.0, 4.0, -4.0, -1.0, 1.0, 0.0),
    (0.0, -2.0, -1.0, 2.0, 1.0, 0.0),
    (0.0, 2.0, -1.0, -2.0, 1.0, 0.0),
    (0.0, 4.0, 0.0, -5.0, 0.0, 1.0),
)
_WINO_G = (  # kernel transform G (6×3)
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)
_WINO_AT = (  # output transform A^T (4×6)
    (1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
    (0.0, 1.0, -1.0, 2.0, -2.0, 0.0),
    (0.0, 1.0, 1.0, 4.0, 4.0, 0.0),
    (0.0, 1.0, -1.0, 8.0, -8.0, 1.0),
)


def _conv_algorithm() -> str:
    algorithm = os.environ.get("DRN_JAX_CONV", "auto")
    if algorithm not in _CONV_ALGORITHMS:
        raise ValueError(f"DRN_JAX_CONV must be one of {', '.join(_CONV_ALGORITHMS)}; got {algorithm!r}")
    return algorithm


def _cpu_float32_stride1(x: jax.Array, kernel: jax.Array, stride: int) -> bool:
    algorithm = _conv_algorithm()
    if algorithm == "direct" or stride != 1:
        return False
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        return False  # the Winograd transforms' sums of up to 16 terms (×25) need float32
    return algorithm == "winograd" or jax.default_backend() == "cpu"


def _use_winograd(x: jax.Array, kernel: jax.Array, stride: int) -> bool:
    return (min(kernel.shape[2], kernel.shape[3]) >= _WINOGRAD_MIN_CHANNELS
            and _cpu_float32_stride1(x, kernel, stride))


def _use_shifted_sum(x: jax.Array, kernel: jax.Array, stride: int) -> bool:
    return (kernel.shape[2] >= _WINOGRAD_MIN_CHANNELS > kernel.shape[3]
            and _cpu_float32_stride1(x, kernel, stride))


def _lincomb(coefficients, terms):
    """``Σ c·t`` over the nonzero ``c``, as one elementwise expression XLA fuses."""
    out = None
    for c, t in zip(coefficients, terms):
        if c == 0:
            continue
        v = t if c == 1 else (-t if c == -1 else t * c)
        out = v if out is None else out + v
    return out


def _tiles(length: int) -> int:
    return -(-length // _WINO_M)


def _column(matrix, j):
    return tuple(row[j] for row in matrix)


def _wino_input(x: jax.Array) -> jax.Array:
    """``V = B^T d B`` for every 6×6 tile ``d`` (stride 4) of ``x`` zero-padded by one pixel.

    ``(N, H, W, C) -> (36, N·Th·Tw, C)`` with ``Th = ceil(H/4)``, ``Tw = ceil(W/4)``.
    """
    m, a = _WINO_M, _WINO_A
    n, h, w, c = x.shape
    th, tw = _tiles(h), _tiles(w)
    # Pad to 4·(T+1) so the padded image is (T+1) blocks of 4: tile t's six rows are rows 0-3
    # of block t and rows 0-1 of block t+1, all plain slices of the block view.
    xp = jnp.pad(x, ((0, 0), (1, m * th + 3 - h), (1, m * tw + 3 - w), (0, 0)))
    blocks = xp.reshape(n, th + 1, m, tw + 1, m, c)
    rows = [blocks[:, i // m: i // m + th, i % m] for i in range(a)]  # (N, Th, Tw+1, 4, C)
    v = jnp.stack([_lincomb(_WINO_BT[r], rows) for r in range(a)])  # (6, N, Th, Tw+1, 4, C)
    cols = [v[:, :, :, j // m: j // m + tw, j % m] for j in range(a)]  # (6, N, Th, Tw, C)
    v = jnp.stack([_lincomb(_WINO_BT[s], cols) for s in range(a)], axis=1)  # (6, 6, N, Th, Tw, C)
    return v.reshape(a * a, n * th * tw, c)


def _wino_input_transpose(dv: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
    """The transpose (adjoint) of :func:`_wino_input`: ``(36, T, C) -> (N, H, W, C)``.

    Each tile's ``B dV B^T`` is added back where the tile came from (tiles overlap by 2 pixels).
    """
    m, a = _WINO_M, _WINO_A
    n, h, w, c = shape
    th, tw = _tiles(h), _tiles(w)
    dv = dv.reshape(a, a, n, th, tw, c)

    def overlap_add(parts, axis):
        # parts[i] holds tile offset i (0..5); offsets 4, 5 land in the next block's 0, 1.
        out = []
        for o in range(m):
            pad = [(0, 0)] * parts[o].ndim
            pad[axis] = (0, 1)
            v = jnp.pad(parts[o], pad)
            if o + m < a:
                pad[axis] = (1, 0)
                v = v + jnp.pad(parts[o + m], pad)
            out.append(v)
        return out

    cols = [_lincomb(_column(_WINO_BT, j), [dv[:, s] for s in range(a)]) for j in range(a)]
    r = jnp.stack(overlap_add(cols, 3), axis=4)  # (6, N, Th, Tw+1, 4, C)
    rows = [_lincomb(_column(_WINO_BT, i), [r[s] for s in range(a)]) for i in range(a)]
    p = jnp.stack(overlap_add(rows, 1), axis=2)  # (N, Th+1, 4, Tw+1, 4, C)
    p = p.reshape(n, (th + 1) * m, (tw + 1) * m, c)
    return p[:, 1: h + 1, 1: w + 1]


def _wino_output(mm: jax.Array, bias: jax.Array, shape: tuple[int, int, int], shuffle: int
                 ) -> jax.Array:
    """``Y = A^T M A + bias`` per tile, tiles put back in place: ``(36, T, K) -> (N, H, W, K)``,
    or ``pixel_shuffle(·, shuffle)`` of it, ``(N, H·r, W·r, K/r²)``, in the same pass."""
    m, a = _WINO_M, _WINO_A
    n, h, w = shape
    th, tw = _tiles(h), _tiles(w)
    k = mm.shape[-1]
    # One (16, 36) @ (36, T·K) product with A^T ⊗ A^T: a single pass over M, which XLA runs
    # faster than the two-stage sums (and compiles faster).
    at = np.asarray(_WINO_AT)
    y = jnp.dot(jnp.asarray(np.kron(at, at), mm.dtype), mm.reshape(a * a, -1),
                precision=jax.lax.Precision.HIGHEST)
    y = y.reshape(m, m, n, th, tw, k) + bias  # output pixel (4·ty + α, 4·tx + β) is y[α, β, :, ty, tx]
    if shuffle == 1:
        y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, th * m, tw * m, k)
        return y[:, :h, :w]
    # pixel_shuffle: out[(4·ty + α)·r + i, (4·tx + β)·r + j, c] = y[α, β, ty, tx, c·r² + i·r + j]
    q = shuffle
    y = y.reshape(m, m, n, th, tw, k // (q * q), q, q).transpose(2, 3, 0, 6, 4, 1, 7, 5)
    y = y.reshape(n, th * m * q, tw * m * q, k // (q * q))
    return y[:, : h * q, : w * q]


def _wino_output_transpose(dy: jax.Array, shape: tuple[int, int, int], shuffle: int
                           ) -> tuple[jax.Array, jax.Array]:
    """The transpose of :func:`_wino_output`: ``dy -> (dM (36, T, K), dbias (K,))``."""
    m, a = _WINO_M, _WINO_A
    n, h, w = shape
    th, tw = _tiles(h), _tiles(w)
    q = shuffle
    dy = jnp.pad(dy, ((0, 0), (0, (th * m - h) * q), (0, (tw * m - w) * q), (0, 0)))
    if q == 1:
        d = dy.reshape(n, th, m, tw, m, dy.shape[-1])
    else:
        c = dy.shape[-1]
        d = dy.reshape(n, th, m, q, tw, m, q, c).transpose(0, 1, 2, 4, 5, 7, 3, 6)
        d = d.reshape(n, th, m, tw, m, c * q * q)
    k = d.shape[-1]
    rows = [d[:, :, i] for i in range(m)]  # (N, Th, Tw, 4, K)
    r = jnp.stack([_lincomb(_column(_WINO_AT, s), rows) for s in range(a)])  # (6, N, Th, Tw, 4, K)
    cols = [r[..., j, :] for j in range(m)]
    dm = jnp.stack([_lincomb(_column(_WINO_AT, s), cols) for s in range(a)], axis=1)
    dm = dm.reshape(a * a, n * th * tw, k)
    # A^T's second column (interpolation point 1) is all ones, so dM[1, 1] of a tile is the sum
    # of its 4×4 output gradients: the bias gradient is a sum over (36·T)/36 rows, not over dy.
    dbias = jnp.sum(dm[1 * a + 1], axis=0)
    return dm, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _wino_input_op(x: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
    return _wino_input(x)


_wino_input_op.defvjp(
    lambda x, shape: (_wino_input(x), None),
    lambda shape, _, dv: (_wino_input_transpose(dv, shape),),
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _wino_output_op(mm: jax.Array, bias: jax.Array, shape: tuple[int, int, int], shuffle: int
                    ) -> jax.Array:
    return _wino_output(mm, bias, shape, shuffle)


_wino_output_op.defvjp(
    lambda mm, bias, shape, shuffle: (_wino_output(mm, bias, shape, shuffle), None),
    lambda shape, shuffle, _, dy: _wino_output_transpose(dy, shape, shuffle),
)


def _varying_like(a: jax.Array, like: jax.Array) -> jax.Array:
    """``a`` cast to vary over the manual mesh axes ``like`` varies over (inside ``shard_map``).

    A parameter is replicated (invariant) inside the training step's ``shard_map`` while the
    activations vary over the data axis; JAX casts it implicitly when both meet in an operation,
    but a ``custom_vjp`` must see matching types, or its backward pass would return a varying
    gradient for an invariant input. The cast's transpose is the ``psum`` autodiff does anyway.
    """
    def axes(value):
        aval = jax.typeof(value)
        manual = getattr(aval, "manual_axis_type", None)
        return frozenset(manual.varying) if manual is not None else frozenset(getattr(aval, "vma", ()))

    missing = axes(like) - axes(a)
    return jax.lax.pcast(a, tuple(sorted(missing)), to="varying") if missing else a


def _winograd_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array, shuffle: int = 1
                      ) -> jax.Array:
    """``pixel_shuffle(conv3x3(x, kernel) + bias, shuffle)`` by Winograd F(4×4, 3×3).

    Stride 1, one pixel of zero padding; differentiable (custom VJPs for the transforms).
    """
    n, h, w, c = x.shape
    k = kernel.shape[-1]
    # U = G g G^T for every (C, K) pair: one (36, 9) @ (9, C·K) product with G ⊗ G.
    g = np.asarray(_WINO_G)
    u = jnp.dot(jnp.asarray(np.kron(g, g), kernel.dtype), kernel.reshape(9, c * k),
                precision=jax.lax.Precision.HIGHEST).reshape(_WINO_A * _WINO_A, c, k)
    v = _wino_input_op(x, (n, h, w, c))
    mm = jax.lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # 36 (T, C) @ (C, K)
    return _wino_output_op(mm, _varying_like(bias, mm), (n, h, w), shuffle)


def _shifted_sum_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1, pad-1 3×3 convolution to few output channels as one matrix product and a sum.

    ``z = x @ [W_00 … W_22]`` gives all nine taps' contributions at once (``C -> 9·K``), and the
    output is the sum of the nine taps' planes shifted into place. For ``K = 3`` this is several
    times faster on CPU than XLA's convolution, which vectorises over the output channels.
    """
    n, h, w, c = x.shape
    k = kernel.shape[-1]
    taps = kernel.transpose(2, 0, 1, 3).reshape(c, 9 * k)  # column (i·3 + j)·K + o
    z = jnp.dot(x.reshape(n * h * w, c), taps).reshape(n, h, w, 9, k)
    z = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
    # out[y, x] = Σ_ij x[y + i - 1, x + j - 1] W_ij = Σ_ij z_ij[y + i - 1, x + j - 1] (z padded by 1)
    return sum(z[:, i: i + h, j: j + w, 3 * i + j] for i in range(3) for j in range(3))


def conv3x3(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """3×3 cross-correlation with one pixel of zero padding per side, NHWC / HWIO, no bias.

    On CPU, float32 stride-1 convolutions with at least 16 input and output channels use
    Winograd F(4×4, 3×3), and those from at least 16 to fewer channels (the RGB outputs) one
    matrix product and a shifted sum; everything else uses XLA's convolution (see the comment
    above).
    """
    if _use_winograd(x, kernel, stride):
        return _winograd_conv3x3(x, kernel, jnp.zeros((kernel.shape[-1],), x.dtype))
    if _use_shifted_sum(x, kernel, stride):
        return _shifted_sum_conv3x3(x, kernel)
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


class _Conv3x3(nn.Module):
    """``pixel_shuffle(conv3x3(x, kernel, stride) + bias, shuffle)``: ``nn.Conv``'s parameters
    (names, shapes, init) and dtype handling, :func:`conv3x3`'s choice of algorithm, and the
    pixel shuffle done by the Winograd output transform when that is used."""

    features: int
    stride: int = 1
    shuffle: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", default_kernel_init, (3, 3, x.shape[-1], self.features), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if _use_winograd(x, kernel, self.stride):
            return _winograd_conv3x3(x, kernel, bias, self.shuffle)
        y = conv3x3(x, kernel, self.stride) + bias
        return pixel_shuffle(y, self.shuffle) if self.shuffle > 1 else y


def _conv3x3(
    features: int, name: str, dtype: Dtype, param_dtype: Dtype, stride: int = 1, shuffle: int = 1
) -> nn.Module:
    # Padding ((1, 1), (1, 1)) as PyTorch's padding=1; see the module docstring.
    return _Conv3x3(
        features, stride=stride, shuffle=shuffle, dtype=dtype, param_dtype=param_dtype, name=name
    )


class ResidualModule(nn.Module):
    """``x + conv3x3(relu(conv3x3(x)))``: EDSR-style, no batch norm, no residual scaling.

    Maps ``(B, H, W, features)`` to the same shape.
    """

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _conv3x3(self.features, "conv_0", self.dtype, self.param_dtype)(x)
        y = nn.relu(y)
        y = _conv3x3(self.features, "conv_1", self.dtype, self.param_dtype)(y)
        return x + y


class PrimalBlock(nn.Module):
    """One primal block ``P_i``: doubles the resolution of the feature map.

    ``[head conv3x3 3->F] -> num_modules × ResidualModule -> conv3x3 F->4F -> pixel_shuffle(2)``
    gives the next features; ``to_rgb`` (conv3x3 F->3) reads the block's image off them.

    Attributes:
      features: F, the feature width.
      num_modules: R, the residual modules in the block (7 in the paper).
      head: whether this is the first block, which turns the RGB input into F features first.
    """

    features: int
    num_modules: int
    head: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, with_image: bool = True
    ) -> tuple[jax.Array, jax.Array | None]:
        """Runs the block.

        Args:
          x: ``(B, H, W, 3)`` image if ``head`` else ``(B, H, W, F)`` features.
          with_image: whether to compute the ``to_rgb`` side output (its parameters are only
            created when it is computed).

        Returns:
          ``(features, image)``: ``(B, 2H, 2W, F)`` features and the ``(B, 2H, 2W, 3)`` image,
          or ``None`` for the image when ``with_image`` is False.
        """
        conv = lambda f, name: _conv3x3(f, name, self.dtype, self.param_dtype)  # noqa: E731
        if self.head:
            x = conv(self.features, "head")(x)
        # With remat, each module's activations are recomputed in the backward pass instead of
        # kept: less memory for large patches and batches, at +15% FLOPs for the x4 step.
        module_class = nn.remat(ResidualModule) if self.remat else ResidualModule
        for index in range(self.num_modules):
            x = module_class(
                self.features, self.dtype, self.param_dtype, name=f"residual_{index}"
            )(x)
        # conv3x3 F->4F, then pixel_shuffle(2) (fused into the convolution where it can be).
        x = _conv3x3(4 * self.features, "upsample", self.dtype, self.param_dtype, shuffle=2)(x)
        image = conv(IMAGE_CHANNELS, "to_rgb")(x) if with_image else None
        return x, image


class DualBlock(nn.Module):
    """One dual block ``D_i``: ``conv3x3 stride 2 (3->F) -> ReLU -> conv3x3 F->3``.

    Maps a ``(B, H, W, 3)`` image to ``(B, ceil(H/2), ceil(W/2), 3)`` (exactly half for even
    sizes, which is all DRN feeds it), the learnt counterpart of downsampling.
    """

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x = _conv3x3(self.features, "down", self.dtype, self.param_dtype, stride=2)(image)
        x = nn.relu(x)
        return _conv3x3(IMAGE_CHANNELS, "to_rgb", self.dtype, self.param_dtype)(x)


class DRNOutputs(NamedTuple):
    """What :meth:`DRN.__call__` returns (a pytree).

    Attributes:
      primal: the primal images, coarse to fine; ``primal[-1]`` is the super-resolved image
        ``(B, H·scale, W·scale, 3)``. One entry per level when progressive, else just the final.
      dual: the dual reconstructions, or ``None`` without a dual path. Progressive:
        ``dual[i] = D_i(primal[i])`` at level ``i-1``'s resolution (``dual[0]`` at the LR
        resolution). Non-progressive: one entry, the final image mapped back to the LR size.
    """

    primal: tuple[jax.Array, ...]
    dual: tuple[jax.Array, ...] | None


class DRN(nn.Module):
    """Dual Reconstruction Network.

    Attributes:
      scale: upscaling factor, 2, 4 or 8 (``S = log2(scale)`` primal blocks). Anything else
        raises ``ValueError`` when the module is constructed.
      features: F, the feature width (64, METHOD.md's guess, ~1.34M parameters at ×4).
      modules_per_block: R, residual modules per primal block (7, i.e. 14 at ×4, 21 at ×8).
      dual: build the dual blocks and return their outputs from ``__call__`` (training).
      progressive: supervise every level (``primal`` holds S images, one per level, and the
        dual blocks run level by level). With ``False`` — our reading of the paper's Table 4
        "Plain" and "Dual" ablations — only the final image is produced (the intermediate
        ``to_rgb`` convolutions are not created) and, with ``dual=True``, the dual path chains
        all S dual blocks, finest first, to map the final image back to the LR resolution:
        ``dual = (D_0(D_1(...D_{S-1}(final))),)``.
      image_residual: add the bilinearly upsampled image of the level below (the LR input for
        the first level, and for the final image when not progressive) to each level's image, a
        LapSRN-style option of METHOD.md; off by default (not in the paper).
      dtype: computation dtype (e.g. ``jnp.bfloat16`` on accelerators); outputs are float32.
      param_dtype: parameter dtype.
      remat: recompute the residual modules' activations in the backward pass (rematerialise)
        instead of storing them: the same values and parameters, less training memory.

    Initialise with ``model.init(rng, lr)`` (``__call__`` creates every parameter); infer with
    ``model.apply(variables, lr, method="upscale")``.
    """

    scale: int
    features: int = 64
    modules_per_block: int = 7
    dual: bool = True
    progressive: bool = True
    image_residual: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    def __post_init__(self) -> None:
        num_levels(self.scale)  # fail at construction, not deep inside init
        super().__post_init__()

    def setup(self) -> None:
        levels = num_levels(self.scale)
        self.primal_blocks = [
            PrimalBlock(
                self.features,
                self.modules_per_block,
                head=(i == 0),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                remat=self.remat,
            )
            for i in range(levels)
        ]
        if self.dual:
            self.dual_blocks = [
                DualBlock(self.features, dtype=self.dtype, param_dtype=self.param_dtype)
                for _ in range(levels)
            ]

    def _check_input(self, lr: jax.Array) -> jax.Array:
        if lr.ndim != 4 or lr.shape[-1] != IMAGE_CHANNELS:
            raise ValueError(
                f"expected an NHWC batch of RGB images (B, H, W, {IMAGE_CHANNELS}); "
                f"got shape {lr.shape}"
            )
        return lr.astype(self.dtype)

    def _primal_images(self, lr: jax.Array, all_levels: bool) -> list[jax.Array]:
        """Primal images in compute dtype, coarse to fine; only the final one unless needed."""
        features = lr
        previous = lr  # the image of the level below, for image_residual
        images = []
        last = len(self.primal_blocks) - 1
        # Intermediate images exist only when progressive; they are computed when asked for or
        # when the next level's image residual needs them.
        intermediate = self.progressive and (all_levels or self.image_residual)
        for level, block in enumerate(self.primal_blocks):
            features, image = block(features, with_image=(level == last or intermediate))
            if image is None:
                continue
            if self.image_residual:
                image = image + jax.image.resize(previous, image.shape, method="linear")
                previous = image
            images.append(image)
        return images if all_levels else images[-1:]

    def __call__(self, lr: jax.Array) -> DRNOutputs:
        """Training forward pass: all primal levels and, if ``dual``, the dual outputs.

        Args:
          lr: ``(B, H, W, 3)`` float LR images in [0, 1]; any ``H``, ``W`` (odd included).

        Returns:
          :class:`DRNOutputs` of float32 arrays: ``primal`` level ``i`` (progressive) is
          ``(B, H·2^(i+1), W·2^(i+1), 3)``; ``dual`` level ``i`` is ``(B, H·2^i, W·2^i, 3)``
          (non-progressive: ``primal = (final,)``, ``dual = ((B, H, W, 3),)``).
        """
        x = self._check_input(lr)
        primal = self._primal_images(x, all_levels=True)
        dual = None
        if self.dual:
            if self.progressive:
                dual = [block(image) for block, image in zip(self.dual_blocks, primal)]
            else:
                reconstruction = primal[-1]
                for block in reversed(self.dual_blocks):  # finest first
                    reconstruction = block(reconstruction)
                dual = [reconstruction]
            dual = tuple(d.astype(jnp.float32) for d in dual)
        return DRNOutputs(primal=tuple(p.astype(jnp.float32) for p in primal), dual=dual)

    def upscale(self, lr: jax.Array) -> jax.Array:
        """Inference: the super-resolved image only, equal to ``__call__(lr).primal[-1]``.

        Skips the dual blocks and (unless ``image_residual`` needs them) the intermediate
        levels' ``to_rgb`` convolutions.

        Args:
          lr: ``(B, H, W, 3)`` float LR images in [0, 1].

        Returns:
          float32 ``(B, H·scale, W·scale, 3)``, not clipped.
        """
        x = self._check_input(lr)
        return self._primal_images(x, all_levels=False)[-1].astype(jnp.float32)


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or ``jax.ShapeDtypeStruct``s).

    Pass ``variables["params"]`` (or the whole ``variables``; DRN has no other collection).
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def expected_param_count(
    scale: int,
    features: int = 64,
    modules_per_block: int = 7,
    dual: bool = True,
    progressive: bool = True,
) -> int:
    """Parameter count of ``DRN(scale, features, modules_per_block, dual, progressive)``.

    Derived from the layer sizes (``image_residual`` adds none): a 3×3 conv from ``a`` to ``b``
    channels has ``9·a·b`` weights and ``b`` biases. For the defaults at ×4 this is 1,341,708.
    """
    levels = num_levels(scale)
    f = features

    def conv(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + c_out

    head = conv(IMAGE_CHANNELS, f)  # block 0 only
    residual = modules_per_block * 2 * conv(f, f)  # per block
    upsample = conv(f, 4 * f)  # per block, before the pixel shuffle
    to_rgb = conv(f, IMAGE_CHANNELS)  # per supervised level
    dual_block = conv(IMAGE_CHANNELS, f) + conv(f, IMAGE_CHANNELS)  # per level
    rgb_levels = levels if progressive else 1
    total = head + levels * (residual + upsample) + rgb_levels * to_rgb
    if dual:
        total += levels * dual_block
    return total
