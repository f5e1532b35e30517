"""Tests of drn_jax.resize: MATLAB imresize(..., 'bicubic'), by hand and against Pillow."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from PIL import Image

from drn_jax.resize import contributions, cubic, imresize, modcrop, output_shape, resize_matrix

SCALES = (1 / 2, 1 / 3, 1 / 4, 1 / 8, 2.0, 3.0, 4.0, 8.0, 0.7, 1.5)


def _random_image(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(shape, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Weights: the kernel, hand-computed rows, general properties
# ----------------------------------------------------------------------------------------------


def test_cubic_kernel_values():
    # Keys, a = -0.5: 1 at 0, 0 at the integers, symmetric, 0 beyond 2.
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, -0.25, -1.25])
    expected = [1.0, 0.8671875, 0.5625, 0.2265625, 0.0, -0.0703125, -0.0625, -0.0234375, 0.0,
                0.0, 0.8671875, -0.0703125]
    np.testing.assert_array_equal(cubic(x), expected)


def test_upscale_x2_weights_by_hand():
    # in_len 4, x2. Output 1 (1-based): u = 1/2 + 0.5*(1 - 1/2) = 0.75; left = floor(0.75 - 2)
    # = -2; P = ceil(4) + 2 = 6 taps at -2..3, distances u - idx = 2.75, 1.75, 0.75, -0.25,
    # -1.25, -2.25, so weights cubic(.) = 0, -0.0234375, 0.2265625, 0.8671875, -0.0703125, 0
    # (e.g. cubic(0.75) = 1.5*0.421875 - 2.5*0.5625 + 1; cubic(1.75) = -0.5*5.359375
    # + 2.5*3.0625 - 4*1.75 + 2); they already sum to 1. Mirror fold, aux = [1 2 3 4 4 3 2 1]:
    # idx -2 -> aux(mod(-3, 8) + 1) = aux(6) = 3, -1 -> aux(7) = 2, 0 -> aux(8) = 1, 1, 2, 3.
    # Input 1 gets 0.2265625 (from idx 0) + 0.8671875 (idx 1) = 1.09375;
    # input 2 gets -0.0234375 (idx -1) - 0.0703125 (idx 2) = -0.09375.
    # Output 2: u = 1.25, taps -1..4, distances 2.25, 1.25, 0.25, -0.75, -1.75, -2.75:
    # input 1 (idx 0 and 1): -0.0703125 + 0.8671875 = 0.796875; input 2: 0.2265625;
    # input 3: -0.0234375.
    matrix = resize_matrix(4, 8, 2.0, True)
    np.testing.assert_array_equal(matrix[0], [1.09375, -0.09375, 0.0, 0.0])
    np.testing.assert_array_equal(matrix[1], [0.796875, 0.2265625, -0.0234375, 0.0])
    # By symmetry the last rows mirror the first.
    np.testing.assert_array_equal(matrix[-1], matrix[0, ::-1])
    np.testing.assert_array_equal(matrix[-2], matrix[1, ::-1])

    weights, indices = contributions(4, 8, 2.0, True)
    # Taps 0 and 5 are at distance 2 + frac(u) and 3 - frac(u): always weight 0, so dropped.
    assert weights.shape == indices.shape == (8, 4)
    np.testing.assert_array_equal(weights[0], [-0.0234375, 0.2265625, 0.8671875, -0.0703125])
    np.testing.assert_array_equal(indices[0], [1, 0, 0, 1])  # 0-based: inputs 2, 1, 1, 2


def test_downscale_half_weights_by_hand():
    # in_len 8, x1/2 with antialiasing: h(x) = 0.5*cubic(0.5*x), width 8. Output 1:
    # u = 1*2 + 0.5*(1 - 2) = 1.5; left = floor(1.5 - 4) = -3; P = 10 taps at -3..6, distances
    # 4.5, 3.5, ..., -4.5, weights 0, 0.5*cubic(1.75) = -0.01171875, 0.5*cubic(1.25) =
    # -0.03515625, 0.5*cubic(0.75) = 0.11328125, 0.5*cubic(0.25) = 0.43359375, then the same
    # mirrored; they sum to 1. aux = [1..8, 8..1]: idx -2 -> 3, -1 -> 2, 0 -> 1.
    # Input 1: 0.11328125 (idx 0) + 0.43359375 (idx 1) = 0.546875; input 2: -0.03515625
    # (idx -1) + 0.43359375 = 0.3984375; input 3: -0.01171875 (idx -2) + 0.11328125 =
    # 0.1015625; input 4: -0.03515625; input 5: -0.01171875.
    matrix = resize_matrix(8, 4, 0.5, True)
    np.testing.assert_array_equal(
        matrix[0], [0.546875, 0.3984375, 0.1015625, -0.03515625, -0.01171875, 0.0, 0.0, 0.0])
    # Output 2: u = 3.5, left = -1, taps -1..8 with the same ten weights; idx 0 and 1 both
    # fold to input 1: -0.01171875 - 0.03515625 = -0.046875; idx 2..7 are inputs 2..7.
    np.testing.assert_array_equal(
        matrix[1],
        [-0.046875, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875, 0.0],
    )


def test_no_antialias_keeps_narrow_kernel_when_shrinking():
    weights, _ = contributions(16, 8, 0.5, antialias=False)
    # u = 2x - 0.5 sits halfway between two inputs: 4 taps of cubic(0.5), cubic(1.5).
    assert weights.shape[1] == 4
    np.testing.assert_array_equal(weights[3], [-0.0625, 0.5625, 0.5625, -0.0625])


@pytest.mark.parametrize("in_len", [1, 2, 5, 17, 64])
@pytest.mark.parametrize("scale", SCALES)
def test_weight_rows_sum_to_one(in_len, scale):
    out_len = int(np.ceil(in_len * scale))
    matrix = resize_matrix(in_len, out_len, scale, True)
    assert matrix.shape == (out_len, in_len)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    weights, indices = contributions(in_len, out_len, scale, True)
    assert indices.min() >= 0 and indices.max() < in_len
    assert np.all(np.any(weights != 0, axis=0))  # all-zero columns were dropped


def test_resize_matrix_is_cached_and_read_only():
    assert resize_matrix(10, 5, 0.5, True) is resize_matrix(10, 5, 0.5, True)
    with pytest.raises(ValueError):
        resize_matrix(10, 5, 0.5, True)[0, 0] = 1.0


# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------


def test_output_shape_matlab_rule():
    assert output_shape((361, 250), 1 / 4) == (91, 63)  # ceil(90.25), ceil(62.5)
    assert output_shape((250, 361), 1 / 3) == (84, 121)  # ceil(83.33), ceil(120.33)
    assert output_shape((510, 512), 1 / 3) == (170, 171)
    assert output_shape((64, 48), 4) == (256, 192)
    assert output_shape((10, 7), 0.7) == (7, 5)  # ceil(7.0), ceil(4.9)
    with pytest.raises(ValueError):
        output_shape((10, 10), 0)


def test_imresize_shapes():
    image = _random_image((361, 250, 3))
    assert imresize(image, 1 / 4).shape == (91, 63, 3)
    assert imresize(image, output_size=(100, 50)).shape == (100, 50, 3)
    assert imresize(_random_image((250, 361, 1)), 1 / 3).shape == (84, 121, 1)


def test_modcrop():
    image = np.zeros((250, 361, 3), np.uint8)
    assert modcrop(image, 3).shape == (249, 360, 3)
    assert modcrop(image, 4).shape == (248, 360, 3)
    assert isinstance(modcrop(image, 4), np.ndarray)
    batch = jnp.arange(2 * 7 * 9 * 1).reshape(2, 7, 9, 1)
    cropped = modcrop(batch, 4)
    assert isinstance(cropped, jax.Array)
    np.testing.assert_array_equal(cropped, batch[:, :4, :8])  # top-left anchored


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------


class ImresizeVariantsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*SCALES)
    def test_constant_image_stays_constant(self, scale):
        image = np.full((2, 24, 17, 3), 0.3, np.float32)
        out = self.variant(lambda x: imresize(x, scale))(image)
        chex.assert_shape(out, (2, *output_shape((24, 17), scale), 3))
        np.testing.assert_allclose(out, 0.3, atol=1e-6)
        out8 = self.variant(lambda x: imresize(x, scale))(np.full((24, 17, 3), 77, np.uint8))
        np.testing.assert_array_equal(out8, 77)

    @chex.variants(with_jit=True, without_jit=True)
    def test_batch_axes(self):
        images = _random_image((2, 3, 20, 14, 3), dtype=np.uint8)
        out = self.variant(lambda x: imresize(x, 1 / 3))(images)
        chex.assert_shape(out, (2, 3, 7, 5, 3))
        for i in range(2):
            for j in range(3):
                np.testing.assert_array_equal(out[i, j], imresize(images[i, j], 1 / 3))


def test_jit_equals_eager():
    image = _random_image((21, 30, 3))
    jitted = imresize(image, 1 / 3)
    with jax.disable_jit():
        eager = imresize(image, 1 / 3)
    np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-6)


def test_matches_separable_numpy_reference():
    # Dimension order: H has the smaller scale (4/20 < 9/15), so it goes first.
    image = _random_image((20, 15, 2), seed=1).astype(np.float64)
    rows, cols = resize_matrix(20, 4, 0.2, True), resize_matrix(15, 9, 0.6, True)
    expected = np.einsum("ow,hwc->hoc", cols, np.einsum("oh,hwc->owc", rows, image))
    out = imresize(image.astype(np.float32), output_size=(4, 9))
    np.testing.assert_allclose(out, expected, atol=2e-6)


def test_uint8_rounds_half_away_from_zero_and_saturates():
    # One row, x2 along W: output 1 = 1.09375 a - 0.09375 b = (140 a - 12 b)/128, exact in
    # float32. a = 4, b = 20: 320/128 = 2.5, which MATLAB rounds to 3 (banker's would give 2).
    # a = 255, b = 0: 278.9 saturates to 255; a = 0, b = 255: -23.9 saturates to 0.
    row = np.array([[4, 20, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0]], np.uint8)
    image = row[:, :, None]  # (H=3, W=4, C=1); H is resized by 1 (identity)
    exact = imresize(image.astype(np.float32), output_size=(3, 8))
    assert exact[0, 0, 0] == 2.5
    out = imresize(image, output_size=(3, 8))
    assert out.dtype == jnp.uint8
    assert out[0, 0, 0] == 3
    assert out[1, 0, 0] == 255
    assert out[2, 0, 0] == 0


def test_uint8_rounds_after_each_pass():
    # MATLAB's imresizemex returns the input class after each 1-D pass, so a uint8 resize is
    # round(M_w @ round(M_h @ x)), not round(M_w @ M_h @ x).
    image = _random_image((30, 27, 3), seed=2, dtype=np.uint8)
    rows, cols = resize_matrix(30, 10, 1 / 3, True), resize_matrix(27, 9, 1 / 3, True)

    def matlab_round(x):
        return np.floor(np.clip(x, 0, 255) + 0.5)

    first = matlab_round(np.einsum("oh,hwc->owc", rows, image.astype(np.float64)))
    expected = matlab_round(np.einsum("ow,hwc->hoc", cols, first))
    np.testing.assert_array_equal(imresize(image, 1 / 3), expected)


def test_quantize_matches_uint8_path():
    image = _random_image((24, 20, 3), seed=3, dtype=np.uint8)
    for scale in (1 / 4, 1 / 3, 2.0, 3.0):
        as_uint8 = np.asarray(imresize(image, scale)).astype(np.float32)
        as_float = np.asarray(imresize(image.astype(np.float32) / 255, scale, quantize=True))
        assert as_float.dtype == np.float32
        assert as_float.min() >= 0.0 and as_float.max() <= 1.0
        np.testing.assert_allclose(as_float * 255, as_uint8, atol=1e-3)


def test_float_output_keeps_dtype_and_overshoot():
    image = np.zeros((8, 8, 1), np.float32)
    image[:, 4:] = 1.0
    out = imresize(image, 2.0)
    assert out.dtype == jnp.float32
    assert out.min() < 0.0 and out.max() > 1.0  # bicubic ringing is not clipped for floats
    assert imresize(image.astype(jnp.bfloat16), 2.0).dtype == jnp.bfloat16


def test_reproduces_quadratics_in_the_interior():
    # Keys' a = -0.5 cubic reproduces polynomials up to degree 2 exactly, so away from the
    # mirrored borders an x2 upscale samples the quadratic at u = x/2 + 0.25 (1-based).
    n = 16
    column = np.arange(1, n + 1, dtype=np.float64)
    image = np.broadcast_to((0.01 * column**2 - 0.1 * column)[None, :, None], (4, n, 1))
    out = np.asarray(imresize(image.astype(np.float32), output_size=(4, 2 * n)))[0, :, 0]
    u = np.arange(1, 2 * n + 1) / 2 + 0.25
    expected = 0.01 * u**2 - 0.1 * u
    interior = slice(4, 2 * n - 4)  # taps of outputs 5..28 stay within 1..16
    np.testing.assert_allclose(out[interior], expected[interior], atol=1e-6)


def test_down_up_roundtrip_of_smooth_image():
    # A smooth image survives /2 then x2 almost unchanged (bicubic is nearly ideal on it).
    y, x = np.mgrid[0:64, 0:64] / 64.0
    image = (0.5 + 0.25 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y))[..., None]
    back = imresize(imresize(image.astype(np.float32), 0.5), 2.0)
    np.testing.assert_allclose(back[8:-8, 8:-8], image[8:-8, 8:-8], atol=5e-3)


@pytest.mark.parametrize(
    "in_hw, scale", [((48, 60), 1 / 3), ((64, 40), 1 / 4), ((20, 15), 2.0), ((12, 10), 3.0)]
)
def test_matches_pillow_bicubic_in_the_interior(in_hw, scale):
    # An independent implementation: Pillow's BICUBIC is the same Keys a = -0.5 kernel with the
    # same pixel-centre alignment and the same kernel stretching when shrinking; on float ('F')
    # images it computes in double without rounding. It differs from MATLAB only at the borders
    # (it truncates and renormalises the kernel instead of mirroring), so compare the interior.
    image = _random_image(in_hw, seed=4)
    out_hw = output_shape(in_hw, scale)
    pillow = np.asarray(Image.fromarray(image).resize(out_hw[::-1], Image.Resampling.BICUBIC))
    ours = np.asarray(imresize(image[..., None], scale))[..., 0]
    margin = int(np.ceil(2 * max(scale, 1 / scale))) + 1
    inner = (slice(margin, -margin), slice(margin, -margin))
    np.testing.assert_allclose(ours[inner], pillow[inner], atol=2e-5)


def test_argument_errors():
    image = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(image)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(image, 2.0, output_size=(16, 16))
    with pytest.raises(ValueError):
        imresize(np.zeros((8, 8), np.float32), 2.0)
    with pytest.raises(TypeError):
        imresize(np.zeros((8, 8, 3), np.int32), 2.0)
    with pytest.raises(TypeError):
        imresize(np.zeros((8, 8, 3), np.uint8), 2.0, quantize=True)
