"""Tests of drn_jax.metrics: PSNR, SSIM (against scikit-image), luma, gradient PSNR, protocol."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from drn_jax import metrics
from drn_jax.metrics import (
    benchmark_luma,
    bicubic_baseline_y,
    gradient_magnitude,
    gradient_psnr,
    psnr,
    rgb_to_y,
    score_y,
    shave,
    ssim,
)


def _textured_pair(shape, seed=0):
    """A smooth-plus-noise 0-255 image and a noisy copy of it, float64."""
    rng = np.random.default_rng(seed)
    height, width = shape[-3], shape[-2]
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = 128 + 80 * np.sin(7 * x + 3 * y) * np.cos(5 * y)
    base = np.broadcast_to(base[..., None], shape) + rng.normal(0, 10, shape)
    other = base + rng.normal(0, 15, shape)
    return np.clip(base, 0, 255), np.clip(other, 0, 255)


# ----------------------------------------------------------------------------------------------
# PSNR
# ----------------------------------------------------------------------------------------------


def test_psnr_of_unit_offset_on_0_255_scale():
    a = np.full((2, 16, 16, 1), 100.0, np.float32)
    value = psnr(a + 1.0, a, max_value=255.0)
    chex.assert_shape(value, (2,))
    # 10 log10(255^2 / 1) = 48.1308 dB
    np.testing.assert_array_equal(np.round(np.asarray(value, np.float64), 4), [48.1308] * 2)


def test_psnr_identical_is_inf_and_scale_free():
    a, b = _textured_pair((20, 24, 3))
    assert np.isinf(psnr(a, a, max_value=255.0))
    on_255 = psnr(a, b, max_value=255.0)
    on_1 = psnr(a / 255.0, b / 255.0, max_value=1.0)
    np.testing.assert_allclose(on_1, on_255, rtol=1e-5)
    mse = np.mean((a - b) ** 2)
    np.testing.assert_allclose(on_255, 10 * np.log10(255.0**2 / mse), rtol=1e-5)


def test_psnr_uint8_does_not_wrap():
    a = np.full((8, 8, 1), 10, np.uint8)
    b = np.full((8, 8, 1), 12, np.uint8)  # a - b would wrap to 254 in uint8
    np.testing.assert_allclose(psnr(a, b, 255.0), 10 * np.log10(255.0**2 / 4), rtol=1e-6)


def test_psnr_shave_ignores_border():
    a = np.zeros((10, 12, 1), np.float32)
    b = a.copy()
    b[0, :] = b[:, -1] = 1.0  # errors only in the outer ring
    assert np.isinf(psnr(a, b, shave=1))
    assert np.isfinite(psnr(a, b, shave=0))


def test_shave():
    images = jnp.arange(2 * 10 * 12 * 3).reshape(2, 10, 12, 3)
    chex.assert_shape(shave(images, 3), (2, 4, 6, 3))
    np.testing.assert_array_equal(shave(images, 3), images[:, 3:7, 3:9])
    assert shave(images, 0) is images
    with pytest.raises(ValueError):
        shave(images, 5)


# ----------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------


def _skimage_ssim(a, b, channel_axis=None):
    # skimage filters the whole image ('reflect' borders) and then averages the SSIM map over
    # all but (win_size - 1) // 2 = 5 border pixels: exactly the 'valid' map of ssim_index.m.
    # sigma 1.5 with skimage's truncate 3.5 gives the same 11-tap window.
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=channel_axis,
    )


@pytest.mark.parametrize("shape", [(48, 64, 1), (37, 29, 1), (40, 52, 3)])
def test_ssim_matches_skimage(shape):
    a, b = _textured_pair(shape, seed=shape[1])
    expected = _skimage_ssim(a, b, channel_axis=-1)
    assert 0.3 < expected < 0.95  # a meaningful, non-trivial value
    np.testing.assert_allclose(ssim(a, b, max_value=255.0), expected, atol=1e-4)
    # The [0, 1] scale with L = 1 is the same SSIM.
    np.testing.assert_allclose(ssim(a / 255, b / 255, max_value=1.0), expected, atol=1e-4)


def test_ssim_shave_equals_cropping_first():
    a, b = _textured_pair((40, 44, 1), seed=5)
    expected = _skimage_ssim(a[4:-4, 4:-4, 0], b[4:-4, 4:-4, 0])
    np.testing.assert_allclose(ssim(a, b, 255.0, shave=4), expected, atol=1e-4)


def test_ssim_identical_is_one():
    a, _ = _textured_pair((30, 30, 3))
    np.testing.assert_allclose(ssim(a, a, max_value=255.0), 1.0, atol=1e-6)
    flat = np.full((16, 16, 1), 200.0)
    np.testing.assert_allclose(ssim(flat, flat, max_value=255.0), 1.0, atol=1e-6)


def test_ssim_of_large_mean_images_in_float32():
    # Near-white images: E[x^2] - E[x]^2 would cancel badly in float32 without centring.
    a, b = _textured_pair((32, 32, 1), seed=6)
    a, b = 200 + a / 10, 200 + b / 10
    np.testing.assert_allclose(ssim(a, b, 255.0), _skimage_ssim(a[..., 0], b[..., 0]), atol=1e-4)


def test_ssim_too_small_raises():
    with pytest.raises(ValueError):
        ssim(np.zeros((12, 12, 1)), np.zeros((12, 12, 1)), shave=1)


class MetricVariantsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_batched_metrics_equal_per_image(self):
        a, b = _textured_pair((2, 3, 24, 26, 3), seed=7)
        a, b = a.astype(np.float32), b.astype(np.float32)
        for fn in (psnr, ssim, gradient_psnr):
            batched = self.variant(lambda x, y, fn=fn: fn(x, y, 255.0, 2))(a, b)
            chex.assert_shape(batched, (2, 3))
            for i in range(2):
                for j in range(3):
                    np.testing.assert_allclose(
                        batched[i, j], fn(a[i, j], b[i, j], 255.0, 2), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_score_y_keys_and_values(self):
        a, b = _textured_pair((24, 24, 3), seed=8)
        sr, hr = a.astype(np.uint8), b.astype(np.uint8)
        scores = self.variant(lambda x, y: score_y(x, y, 2))(sr, hr)
        assert set(scores) == {"psnr", "ssim", "gradient_psnr"}
        y_sr, y_hr = benchmark_luma(sr), benchmark_luma(hr)
        np.testing.assert_allclose(scores["psnr"], psnr(y_sr, y_hr, 255.0, 2), rtol=1e-6)
        np.testing.assert_allclose(scores["ssim"], ssim(y_sr, y_hr, 255.0, 2), rtol=1e-6)
        np.testing.assert_allclose(
            scores["gradient_psnr"], gradient_psnr(y_sr, y_hr, 255.0, 2), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Luma
# ----------------------------------------------------------------------------------------------


def test_rgb_to_y_known_values():
    colours = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]],
                       np.float32)[:, None, None, :]  # (5, 1, 1, 3)
    expected = np.array([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    y255 = rgb_to_y(colours, max_value=255.0)
    chex.assert_shape(y255, (5, 1, 1, 1))
    np.testing.assert_allclose(y255[:, 0, 0, 0], expected, atol=1e-4)
    np.testing.assert_allclose(
        rgb_to_y(colours / 255, max_value=1.0)[:, 0, 0, 0], expected / 255, atol=1e-6)
    np.testing.assert_array_equal(
        rgb_to_y(colours.astype(np.uint8), 255.0, round_y=True)[:, 0, 0, 0],
        [16, 235, 81, 145, 41])  # 81.481 -> 81, 144.553 -> 145, 40.966 -> 41


def test_benchmark_luma():
    rgb = np.array([[[255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(benchmark_luma(rgb), [[[81.0]]])  # rounded rgb2ycbcr Y
    grey = np.array([[[0], [128], [255]]], np.uint8)
    np.testing.assert_array_equal(benchmark_luma(grey), grey.astype(np.float32))  # as stored
    with pytest.raises(ValueError):
        benchmark_luma(np.zeros((2, 2, 2), np.uint8))


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


def test_gradient_magnitude_uses_the_losses_operator():
    import drn_jax.losses

    assert metrics.image_gradients is drn_jax.losses.image_gradients
    ramp = np.tile(np.arange(5, dtype=np.float32) * 3, (4, 1))[..., None]  # x(r, c) = 3c
    # grad_h = x(c-1) - x(c+1) = -6 inside, 0 on the first/last column; grad_v = 0 inside and
    # on the first/last row, so the magnitude is 6 on the inner columns.
    expected = np.zeros((4, 5, 1), np.float32)
    expected[:, 1:-1] = 6.0
    np.testing.assert_array_equal(gradient_magnitude(ramp), expected)
    assert gradient_magnitude(ramp.astype(np.uint8)).dtype == jnp.float32  # no uint8 wrap


def test_gradient_psnr_by_hand():
    # One bright pixel v = 10 in the centre of a 5x5 zero image: its four neighbours get
    # |grad| = 10 (e.g. grad_h(2, 1) = x(2, 0) - x(2, 2) = -10) and everything else 0; against
    # an all-zero image the MSE of the magnitude maps is 4 * 100 / 25 = 16.
    a = np.zeros((5, 5, 1), np.float32)
    a[2, 2] = 10.0
    b = np.zeros_like(a)
    np.testing.assert_allclose(gradient_psnr(a, b, 255.0), 10 * np.log10(255.0**2 / 16), rtol=1e-6)
    # With shave 1 the 3x3 centre keeps the four neighbours: MSE 400 / 9.
    np.testing.assert_allclose(
        gradient_psnr(a, b, 255.0, shave=1), 10 * np.log10(255.0**2 * 9 / 400), rtol=1e-6)


def test_gradient_psnr_ignores_brightness_offset():
    a = np.round(_textured_pair((20, 20, 1))[0])  # integers: the offset is exact in float32
    assert np.isinf(gradient_psnr(a, a, 255.0))
    assert np.isinf(gradient_psnr(a, a + 7.0, 255.0))  # same gradients
    assert np.isfinite(psnr(a, a + 7.0, 255.0))


# ----------------------------------------------------------------------------------------------
# Bicubic baseline protocol (the full benchmark is in test_bicubic_baselines.py)
# ----------------------------------------------------------------------------------------------


def test_bicubic_baseline_y_shapes_and_dtype():
    rng = np.random.default_rng(9)
    hr = rng.integers(0, 256, size=(2, 50, 37, 3), dtype=np.uint8)
    sr_y, hr_y = bicubic_baseline_y(hr, 4)
    chex.assert_shape([sr_y, hr_y], (2, 48, 36, 1))
    assert sr_y.dtype == hr_y.dtype == jnp.uint8
    np.testing.assert_array_equal(hr_y, benchmark_luma(hr[:, :48, :36]))
    grey = hr[..., :1]
    sr_grey, hr_grey = bicubic_baseline_y(grey, 3)
    np.testing.assert_array_equal(hr_grey, grey[:, :48, :36])


def test_bicubic_baseline_y_keeps_constant_images():
    hr = np.full((24, 24, 3), 200, np.uint8)
    sr_y, hr_y = jax.jit(bicubic_baseline_y, static_argnums=1)(hr, 3)
    np.testing.assert_array_equal(sr_y, hr_y)
