"""Winograd F(4×4, 3×3) and shifted-sum 3×3 convolutions for CPU, with custom VJPs.

On CPU, XLA runs convolutions as direct convolutions (YNNPACK) and computes the kernel gradient
as a "convolution" with a 48×48 window, about 5× slower than the forward pass; DRN's cost is
almost all 3×3 convolutions with 64 (or 256) channels. On CPU those use the Winograd algorithm
F(4×4, 3×3) (Lavin & Gray 2016) instead: every 6×6 input tile (stride 4) and the kernel are
transformed, multiplied in 36 independent (tiles × C_in) @ (C_in × C_out) matrix products, and
transformed back to 4×4 output tiles, 4× fewer multiplications than the direct convolution. The
backward pass is matrix products and the transposed transforms (custom VJPs below: autodiff of
the strided tile slicing would scatter through padded copies). The upsampling convolution's
pixel shuffle and bias are folded into its output transform. Results equal the direct
convolution up to float32 rounding: against a float64 reference the activations' error is ~3×
and the parameter gradients' (median) ~25× that of XLA's float32 convolution, ~1e-6 relative.
Convolutions to fewer than 16 channels (the RGB outputs) are one matrix product and a shifted
sum instead (:func:`shifted_sum_conv3x3`).

Which convolutions use these is decided by :func:`drn_jax.ops.conv3x3` from its explicit
``algorithm`` argument (see :mod:`drn_jax.ops.conv`): from few channels, strided, non-float32,
and (with ``"auto"``) on other backends it uses XLA's convolution; ``"xla"`` turns both of these
off, ``"winograd"`` forces them on any backend. This module only computes; it chooses nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["WINOGRAD_MIN_CHANNELS", "shifted_sum_conv3x3", "winograd_conv3x3"]

WINOGRAD_MIN_CHANNELS = 16
"""Fewer input (or output) channels than this make the matrix products too thin to pay for
the transforms."""

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


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array, shuffle: int = 1
                     ) -> jax.Array:
    """``pixel_shuffle(conv3x3(x, kernel) + bias, shuffle)`` by Winograd F(4×4, 3×3).

    Stride 1, one pixel of zero padding; differentiable (custom VJPs for the transforms).
    ``x`` is NHWC, ``kernel`` HWIO ``(3, 3, C, K)``, ``bias`` ``(K,)``; meant for float32 with
    ``C, K >= WINOGRAD_MIN_CHANNELS`` (the transforms' sums of up to 16 terms, ×25, need float32).
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


def shifted_sum_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
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
