"""Image-quality metrics of the super-resolution literature, in ``jax.numpy``.

Y of MATLAB ``rgb2ycbcr``, border shaving, PSNR, SSIM, gradient PSNR and the bicubic rows'
own protocol, on ``(..., H, W, C)`` images, one value per image, as the community's MATLAB
scripts compute them.

How it works: docs/internals.md#metrics.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from drn_jax.losses import image_gradients
from drn_jax.resize import imresize, modcrop

__all__ = [
    "METRICS",
    "MetricSpec",
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "benchmark_luma",
    "bicubic_baseline_y",
    "gradient_magnitude",
    "gradient_psnr",
    "psnr",
    "rgb_to_y",
    "rgb_to_y_host",
    "score_y",
    "score_y_host",
    "shave",
    "ssim",
]

# Wang et al. 2004 / ssim_index.m constants.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# ITU-R BT.601 luma in MATLAB rgb2ycbcr: Y = 16 + (65.481 R + 128.553 G + 24.966 B) for RGB in
# [0, 1], on the 0-255 scale.
_Y_OFFSET = 16.0
_Y_COEFFS = (65.481, 128.553, 24.966)
_LEVELS = 255.0

_IMAGE_AXES = (-3, -2, -1)


def _float32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _as_float(x, xp):
    """float32 for ``jnp`` (traced), float64 for NumPy (the host path)."""
    return _float32(x) if xp is jnp else np.asarray(x, np.float64)


def _einsum(xp, spec: str, a, b):
    if xp is np:
        return np.einsum(spec, a, b, optimize=True)
    return jnp.einsum(spec, a, b, precision=jax.lax.Precision.HIGHEST)


def _check_pair(a: jax.Array, b: jax.Array) -> None:
    if jnp.ndim(a) < 3 or jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"expected two images of the same shape (..., H, W, C); got {jnp.shape(a)} and "
            f"{jnp.shape(b)}"
        )


@functools.partial(jax.jit, static_argnames=("max_value", "round_y"))
def rgb_to_y(rgb: jax.Array, max_value: float = 1.0, *, round_y: bool = False) -> jax.Array:
    """Luma of MATLAB ``rgb2ycbcr``, on the scale of the input.

    With ``r, g, b = rgb / max_value`` in ``[0, 1]``:
    ``Y = max_value * (16 + 65.481 r + 128.553 g + 24.966 b) / 255``. So for ``max_value=255``
    (0-255 RGB) ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` in ``[16, 235]``, and for
    ``max_value=1`` ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` in
    ``[16/255, 235/255]``.

    Args:
      rgb: ``(..., H, W, 3)`` RGB image(s), values in ``[0, max_value]``, any real dtype.
      max_value: the white level of ``rgb`` (and of the returned ``Y``).
      round_y: round ``Y`` to the 256-level grid (half away from zero), which is what MATLAB's
        ``rgb2ycbcr`` returns for ``uint8`` input. The published SR numbers use it; see
        :func:`score_y`.

    Returns:
      float32 ``(..., H, W, 1)``.
    """
    return _rgb_to_y(rgb, max_value, round_y, jnp)


def rgb_to_y_host(rgb: np.ndarray, max_value: float = 1.0, *, round_y: bool = False) -> np.ndarray:
    """:func:`rgb_to_y` in float64 NumPy on the host (no compilation): float64 ``(..., H, W, 1)``."""
    return _rgb_to_y(rgb, max_value, round_y, np)


def _rgb_to_y(rgb, max_value, round_y, xp):
    rgb = _as_float(rgb, xp)
    if rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape (..., H, W, 3); got {rgb.shape}")
    coeffs = xp.asarray(_Y_COEFFS, rgb.dtype)
    # On the 0-255 scale first: that is where MATLAB rounds the uint8 result.
    y255 = _Y_OFFSET + _einsum(xp, "...c,c->...", rgb, coeffs) / max_value
    if round_y:
        y255 = xp.floor(y255 + 0.5)  # Y >= 16 > 0, so this is MATLAB's half-away rounding
    return (y255 * (max_value / _LEVELS))[..., None]


def shave(images: jax.Array, border: int) -> jax.Array:
    """Removes ``border`` pixels from each side of the ``H`` and ``W`` axes of ``(..., H, W, C)``.

    ``border = 0`` returns the input unchanged. The SR protocol shaves ``scale`` pixels.
    """
    if border < 0:
        raise ValueError(f"border must be non-negative; got {border}")
    if border == 0:
        return images
    height, width = images.shape[-3], images.shape[-2]
    if height <= 2 * border or width <= 2 * border:
        raise ValueError(f"cannot shave {border} pixels from a {height}x{width} image")
    return images[..., border : height - border, border : width - border, :]


# The metrics take an argument named ``shave``, which hides the function; they use this alias.
_shave = shave


@functools.partial(jax.jit, static_argnames=("max_value", "shave"))
def psnr(a: jax.Array, b: jax.Array, max_value: float = 1.0, shave: int = 0) -> jax.Array:
    """Peak signal-to-noise ratio per image: ``10 log10(max_value**2 / MSE)`` in dB.

    The MSE is the mean over ``H × W × C`` (after shaving ``shave`` pixels from each border).

    Args:
      a, b: images of the same shape ``(..., H, W, C)``, values in ``[0, max_value]``.
      max_value: peak value (255.0 for 0-255 images).
      shave: border pixels removed from each side first.

    Returns:
      float32 ``(...)``; ``inf`` where ``a == b``. A +1 error on every 0-255 pixel gives
      ``10 log10(255**2) = 48.1308`` dB.
    """
    return _psnr(a, b, max_value, shave, jnp)


def _psnr(a, b, max_value, shave, xp):
    _check_pair(a, b)
    error = _as_float(_shave(a, shave), xp) - _as_float(_shave(b, shave), xp)
    mse = xp.mean(xp.square(error), axis=_IMAGE_AXES)
    with np.errstate(divide="ignore"):  # identical images: inf, as the jitted version
        return 10.0 * xp.log10(max_value**2 / mse)


@functools.lru_cache(maxsize=64)
def _valid_filter_matrix(length: int) -> np.ndarray:
    """``(length - 10, length)`` matrix of 1-D 'valid' filtering with the SSIM Gaussian.

    ``fspecial('gaussian', 11, 1.5)`` is the outer product of this normalised 1-D window
    ``exp(-k^2 / (2 * 1.5^2))``, ``k = -5..5``, so the 2-D filter is one such matrix per axis.
    Read-only, because the cache shares it.
    """
    offsets = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    window = np.exp(-(offsets**2) / (2.0 * SSIM_SIGMA**2))
    window /= window.sum()
    out_len = length - SSIM_WINDOW + 1
    matrix = np.zeros((out_len, length), dtype=np.float64)
    for row in range(out_len):
        matrix[row, row : row + SSIM_WINDOW] = window
    matrix.setflags(write=False)
    return matrix


def _filter_valid(images: jax.Array, xp=jnp) -> jax.Array:
    """MATLAB ``filter2(fspecial('gaussian', 11, 1.5), x, 'valid')`` over ``H`` and ``W``.

    Input ``(..., H, W, C)``, output ``(..., H - 10, W - 10, C)``. Two banded matmuls at
    ``HIGHEST`` precision (accelerators would otherwise multiply in bfloat16). They cost
    O(H W (H + W)) rather than O(121 H W), but at benchmark sizes they run as fast as shifted
    multiply-adds on CPU and compile about ten times faster, and compile time dominates an
    evaluation that sees every image shape once.
    """
    height, width = images.shape[-3], images.shape[-2]
    rows = xp.asarray(_valid_filter_matrix(height), images.dtype)
    cols = xp.asarray(_valid_filter_matrix(width), images.dtype)
    images = _einsum(xp, "oh,...hwc->...owc", rows, images)
    return _einsum(xp, "ow,...hwc->...hoc", cols, images)


@functools.partial(jax.jit, static_argnames=("max_value", "shave"))
def ssim(a: jax.Array, b: jax.Array, max_value: float = 1.0, shave: int = 0) -> jax.Array:
    """Structural similarity per image, as Wang et al.'s ``ssim_index.m`` (2004).

    An 11x11 Gaussian window (sigma 1.5, normalised), ``K1 = 0.01``, ``K2 = 0.03``,
    ``L = max_value``; local statistics by 'valid' filtering (``filter2(..., 'valid')``, so the
    map is ``(H-10) x (W-10)``) with the biased (1/N-weighted) variances; the mean of the SSIM
    map. Each channel is scored separately and the channel scores averaged (the benchmark
    scores one channel, Y).

    Args:
      a, b: images of the same shape ``(..., H, W, C)``, values in ``[0, max_value]``, at least
        11x11 after shaving.
      max_value: the data range ``L`` (255.0 for 0-255 images).
      shave: border pixels removed from each side first.

    Returns:
      float32 ``(...)``, at most 1 (exactly 1 for identical images).
    """
    return _ssim(a, b, max_value, shave, jnp)


def _ssim(a, b, max_value, shave, xp):
    _check_pair(a, b)
    a, b = _as_float(_shave(a, shave), xp), _as_float(_shave(b, shave), xp)
    if min(a.shape[-3], a.shape[-2]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}; got {a.shape}")
    c1 = (SSIM_K1 * max_value) ** 2
    c2 = (SSIM_K2 * max_value) ** 2

    # (Co)variances are shift-invariant: centring each image on its mean keeps E[x^2] - E[x]^2
    # from cancelling catastrophically in float32 (the reference computes in float64).
    centre = xp.mean(b, axis=_IMAGE_AXES, keepdims=True)
    a, b = a - centre, b - centre
    mu_a, mu_b = _filter_valid(a, xp), _filter_valid(b, xp)
    e_aa, e_bb, e_ab = _filter_valid(a * a, xp), _filter_valid(b * b, xp), _filter_valid(a * b, xp)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    mu_a, mu_b = mu_a + centre, mu_b + centre  # the luminance term needs the true means

    ssim_map = ((2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    return xp.mean(ssim_map, axis=_IMAGE_AXES)


@jax.jit
def gradient_magnitude(images: jax.Array) -> jax.Array:
    """Per-channel magnitude ``sqrt(grad_h**2 + grad_v**2)`` of Eq. 2's image gradients.

    The gradients are :func:`drn_jax.losses.image_gradients` (the ``[1, 0, -1]`` central
    difference, no 1/2, zero on the first/last column resp. row), the same operator the loss
    uses.

    Args:
      images: ``(..., H, W, C)``, any real dtype.

    Returns:
      float32 ``(..., H, W, C)``, in ``[0, sqrt(2) * max_value]`` for inputs in
      ``[0, max_value]``.
    """
    return _gradient_magnitude(images, jnp)


def _gradient_magnitude(images, xp):
    grad_h, grad_v = image_gradients(_as_float(images, xp))
    return xp.sqrt(grad_h**2 + grad_v**2)


@functools.partial(jax.jit, static_argnames=("max_value", "shave"))
def gradient_psnr(
    a: jax.Array, b: jax.Array, max_value: float = 1.0, shave: int = 0
) -> jax.Array:
    """"PSNR over image gradient" (the paper's Table 3), **reconstructed**.

    The paper's definition was lost in extraction (docs/method.md#evaluation); this is the
    reconstruction: the :func:`psnr` (peak ``max_value``) between the gradient-magnitude maps
    (:func:`gradient_magnitude`) of ``a`` and ``b``. Gradients are taken on the full images and
    then ``shave`` pixels are removed, so shaved-border values use their true neighbours (and,
    for ``shave >= 1``, the zero-padded gradient border never counts). The paper applies it to
    the Y channel, as :func:`score_y` does.

    Args:
      a, b: images of the same shape ``(..., H, W, C)``, values in ``[0, max_value]``.
      max_value: peak value (255.0 for 0-255 images).
      shave: border pixels removed from each side of the gradient maps.

    Returns:
      float32 ``(...)`` in dB; ``inf`` where the gradient maps agree.
    """
    return _gradient_psnr(a, b, max_value, shave, jnp)


def _gradient_psnr(a, b, max_value, shave, xp):
    _check_pair(a, b)
    return _psnr(_gradient_magnitude(a, xp), _gradient_magnitude(b, xp), max_value, shave, xp)


def benchmark_luma(images: jax.Array) -> jax.Array:
    """The 8-bit luma the benchmark scores: MATLAB ``rgb2ycbcr`` Y of RGB, or grey as stored.

    The community's MATLAB scripts (SRCNN's ``demo_SR.m`` and its descendants) convert only
    3-channel images (``if size(im, 3) > 1, im = rgb2ycbcr(im); im = im(:, :, 1); end``) and
    score a 1-channel file's grey values directly; Set14's ``bridge.png`` is such a file. On
    ``uint8`` input ``rgb2ycbcr`` returns rounded ``uint8`` Y, hence ``round_y=True``.

    Args:
      images: ``(..., H, W, 3)`` RGB or ``(..., H, W, 1)`` greyscale, 0-255 (``uint8`` or float
        on the 0-255 scale).

    Returns:
      float32 ``(..., H, W, 1)`` on the 0-255 scale: integers in ``[16, 235]`` for RGB input,
      the input itself for greyscale.
    """
    return _benchmark_luma(images, jnp)


def _benchmark_luma(images, xp):
    channels = np.shape(images)[-1]
    if channels == 3:
        return _rgb_to_y(images, _LEVELS, True, xp)
    if channels == 1:
        return _as_float(images, xp)
    raise ValueError(f"expected 1 (grey) or 3 (RGB) channels; got shape {jnp.shape(images)}")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """A registered benchmark metric.

    Attributes:
      fn: ``fn(a, b, *, max_value, shave) -> (...)`` on ``(..., H, W, 1)`` lumas.
      host: the same metric as ``host(a, b, max_value, shave, xp)`` on the array module ``xp``
        (NumPy for :func:`score_y_host`), or ``None``: :func:`score_y_host` then calls ``fn``.
      label: its name in tables (``PSNR``).
      digits: decimals shown in tables.
      column: the table cell it shares (``PSNR/SSIM``: the paper's layout); a metric of its
        own has its label here.
    """

    fn: Callable[..., jax.Array]
    label: str
    digits: int
    column: str
    host: Callable[..., np.ndarray] | None = None


METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec(psnr, "PSNR", 2, "PSNR/SSIM", _psnr),
    "ssim": MetricSpec(ssim, "SSIM", 4, "PSNR/SSIM", _ssim),
    "gradient_psnr": MetricSpec(gradient_psnr, "grad. PSNR", 2, "grad. PSNR", _gradient_psnr),
}
"""The metrics :func:`score_y` computes and eval.py's tables, JSON and CSV show, in order. A new
metric is a function and one line here."""


@functools.partial(jax.jit, static_argnames=("scale",))
def score_y(sr: jax.Array, hr: jax.Array, scale: int) -> dict[str, jax.Array]:
    """The benchmark protocol's scores of 8-bit SR output(s) against the HR image(s).

    Both images go to their 8-bit luma (:func:`benchmark_luma`: MATLAB ``rgb2ycbcr`` Y rounded
    to integers for RGB, the grey values for 1-channel images), ``scale`` pixels are shaved
    from every border, and PSNR, SSIM and gradient PSNR are computed with peak 255. The caller
    has already mod-cropped ``hr`` to a multiple of ``scale`` (:func:`drn_jax.resize.modcrop`)
    and rounded ``sr`` to ``uint8``.

    Rounding Y is the protocol of the published bicubic baselines (SRCNN's scripts apply
    ``rgb2ycbcr`` to ``uint8`` images): with it :func:`bicubic_baseline_y` reproduces Set5
    x2/x3/x4/x8 and Set14 x4 (33.66/0.9299, 30.39/0.8682, 28.42/0.8104, 24.39/0.657,
    26.00/0.7027) to within 0.01 dB and 0.001 (``tests/test_bicubic_baselines.py``).

    Jitted; ``scale`` is static.

    Args:
      sr: ``(..., H, W, 3)`` or ``(..., H, W, 1)`` super-resolved image(s), ``uint8`` (or float
        on the 0-255 scale).
      hr: ground truth, same shape.
      scale: the SR factor, i.e. the pixels shaved from each border.

    Returns:
      ``{name: float32 (...)}`` for every metric in `METRICS` (``psnr``, ``ssim``,
      ``gradient_psnr``).
    """
    _check_pair(sr, hr)
    y_sr, y_hr = benchmark_luma(sr), benchmark_luma(hr)
    return {name: spec.fn(y_sr, y_hr, max_value=_LEVELS, shave=scale) for name, spec in METRICS.items()}


def score_y_host(sr: np.ndarray, hr: np.ndarray, scale: int) -> dict[str, float]:
    """:func:`score_y` of one pair, computed in float64 NumPy on the host: no compilation.

    The protocol's scores of an image pair whose shape evaluation sees once; equal to
    :func:`score_y`'s up to its float32 rounding (well below the tables' digits). A metric
    registered without a ``host`` function is computed with its jitted ``fn``.

    Returns:
      ``{name: float}`` for every metric in `METRICS`.
    """
    sr, hr = np.asarray(sr), np.asarray(hr)
    _check_pair(sr, hr)
    y_sr, y_hr = _benchmark_luma(sr, np), _benchmark_luma(hr, np)
    return {name: float(spec.host(y_sr, y_hr, _LEVELS, scale, np) if spec.host is not None
                        else spec.fn(y_sr, y_hr, max_value=_LEVELS, shave=scale))
            for name, spec in METRICS.items()}


@functools.partial(jax.jit, static_argnames=("scale",))
def bicubic_baseline_y(hr: jax.Array, scale: int) -> tuple[jax.Array, jax.Array]:
    """The published "Bicubic" rows: the luma of an HR image, shrunk and enlarged by bicubic.

    The protocol of SRCNN's ``demo_SR.m``, whose Set5 numbers (33.66/30.39/28.42 dB at
    x2/x3/x4) every later table copies: the HR is mod-cropped to a multiple of ``scale``, reduced
    to its 8-bit luma (:func:`benchmark_luma`), divided by 255, resized by
    ``imresize(., 1/scale, 'bicubic')`` and back by ``imresize(., scale, 'bicubic')`` **in
    floating point (the low-resolution luma is not rounded)**, and only the result rounded to
    ``uint8``. Making an 8-bit RGB LR first and taking Y afterwards scores lower (Set5 x2
    33.64 dB instead of 33.66): it is not the protocol of the published baselines.

    Jitted; ``scale`` is static.

    Args:
      hr: ``(..., H, W, 3)`` RGB or ``(..., H, W, 1)`` greyscale ``uint8`` HR image(s), not
        necessarily mod-cropped.
      scale: integer SR factor.

    Returns:
      ``(sr_y, hr_y)``: ``uint8`` ``(..., H', W', 1)`` lumas of the bicubic result and of the
      mod-cropped HR (``H' = H - H % scale``, ditto ``W'``), ready for :func:`score_y`.
    """
    hr_y = benchmark_luma(modcrop(jnp.asarray(hr), scale))
    low = imresize(hr_y / _LEVELS, 1.0 / scale)
    sr_y = imresize(low, float(scale)) * _LEVELS
    # MATLAB's uint8(): saturate, then round half away from zero (non-negative after the clip).
    sr_y = jnp.floor(jnp.clip(sr_y, 0.0, _LEVELS) + 0.5)
    return sr_y.astype(jnp.uint8), hr_y.astype(jnp.uint8)
