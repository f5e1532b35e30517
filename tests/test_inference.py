"""Whole-image inference: receptive field, exact tiling, self-ensemble, size buckets."""


import jax
import numpy as np
import pytest

from drn_jax import inference, models
from drn_jax.resize import imresize
from tiny_models import tiny_model


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_receptive_field_radius_of_the_paper_model():
    # Convs per level: head + 14 + upsample = 16 at LR, 15 at x2, to_rgb at x4; each pixel
    # shuffle halves the margin (rounding up): 16 + ceil((15 + ceil(1/2)) / 2) = 24.
    assert inference.receptive_field_radius(models.DRN(4)) == 24
    # x8: 16 + ceil((15 + ceil((15 + 1) / 2)) / 2) = 28.
    assert inference.receptive_field_radius(models.DRN(8)) == 28


@pytest.mark.parametrize("scale,image_residual", [(4, False), (8, True)])
def test_receptive_field_radius_is_the_gradient_support(scale, image_residual):
    model, variables = tiny_model(scale, image_residual)
    radius = inference.receptive_field_radius(model)
    size = 2 * radius + 7
    centre = size // 2
    lr = jax.random.uniform(jax.random.key(2), (1, size, size, 3))

    def centre_output(x):
        out = model.apply(variables, x, method="upscale")
        return out[0, centre * scale:(centre + 1) * scale, centre * scale:(centre + 1) * scale].sum()

    support = np.nonzero(np.abs(np.asarray(jax.jit(jax.grad(centre_output))(lr)[0])).sum(-1))
    extent = [centre - support[0].min(), support[0].max() - centre,
              centre - support[1].min(), support[1].max() - centre]
    assert extent == [radius] * 4  # exact: no input beyond the radius matters, the radius does


def test_tile_spans_partition_the_axis():
    for length, tile, overlap in [(20, 20, 6), (37, 20, 6), (45, 20, 3), (1000, 256, 24)]:
        spans = inference.tile_spans(length, tile, overlap)
        assert spans[0][1] == 0 and spans[-1][2] == length
        for (start, lo, hi), nxt in zip(spans, spans[1:] + [None]):
            assert 0 <= start and start + tile <= length
            if nxt is not None:
                assert hi == nxt[1]  # contiguous, no gaps or double writes
                assert hi <= start + tile - overlap and nxt[1] >= nxt[0] + overlap  # context kept
    with pytest.raises(ValueError, match="larger than 2 \\* tile_overlap"):
        inference.tile_spans(40, 12, 6)


def test_tiled_equals_untiled_with_enough_overlap():
    model, variables = tiny_model()
    radius = inference.receptive_field_radius(model)
    lr = random_image(37, 45)
    untiled = np.asarray(model.apply(variables, lr[None].astype(np.float32) / 255, method="upscale"))[0]

    tiled = inference.make_upscaler(model, variables=variables, tile=20)  # overlap: the radius
    assert tiled.tile_overlap == radius
    np.testing.assert_allclose(tiled.upscale_float(lr), untiled, atol=1e-5)
    assert tiled.compilations == 1  # fixed-shape tiles
    # A side shorter than a tile is padded to one; an image within a tile takes a size bucket.
    assert tiled(random_image(45, 15)).shape == (180, 60, 3) and tiled.compilations == 1
    assert tiled(random_image(9, 14)).shape == (36, 56, 3) and tiled.shapes[-1] == (1, 16, 16, 3)

    # One pixel less context and the tile seams show: the test can fail.
    short = inference.make_upscaler(model, variables=variables, tile=20, tile_overlap=radius - 1)
    assert np.abs(short.upscale_float(lr) - untiled).max() > 1e-4


def test_tiled_self_ensemble_equals_the_ensemble_of_whole_images():
    model, variables = tiny_model()
    lr = random_image(29, 35, seed=3)
    x = lr[None].astype(np.float32) / 255
    expected = np.mean([inverse(np.asarray(model.apply(variables, np.ascontiguousarray(forward(x)),
                                                       method="upscale")))
                        for forward, inverse in inference.dihedral_transforms()], axis=0)[0]
    tiled = inference.make_upscaler(model, variables=variables, tile=20, self_ensemble=True)
    np.testing.assert_allclose(tiled.upscale_float(lr), expected, atol=1e-5)
    assert tiled.compilations == 1  # square tiles: rotations keep the shape


def bicubic_predict(batch: np.ndarray) -> np.ndarray:
    return np.asarray(imresize(batch, 4))  # float in, float out, unquantised


@pytest.mark.parametrize("shape", [(32, 32), (21, 38)])
def test_self_ensemble_of_bicubic_is_bicubic(shape):
    # Bicubic commutes with flips and transposes, so its ensemble must equal its plain output.
    lr = random_image(*shape, seed=4)
    plain = inference.make_upscaler(bicubic_predict, 4)
    ensemble = inference.make_upscaler(bicubic_predict, 4, self_ensemble=True)
    np.testing.assert_allclose(ensemble.upscale_float(lr), plain.upscale_float(lr), atol=1e-5)
    if shape == (32, 32):  # already a bucket size: no padding, so equal to imresize itself
        direct = np.asarray(imresize(lr.astype(np.float32) / 255, 4))
        np.testing.assert_allclose(ensemble.upscale_float(lr), direct, atol=1e-5)


def test_bucket_sizes_bound_the_compilations():
    assert [inference.bucket_size(n) for n in (1, 16, 17, 25, 33, 62, 90, 145, 192, 193)] == [
        16, 16, 24, 32, 48, 64, 96, 192, 192, 256]
    model, variables = tiny_model()
    upscaler = inference.make_upscaler(model, variables=variables)
    rng = np.random.default_rng(5)
    for index in range(10):  # LR sides 17..32: buckets 24 and 32
        height, width = rng.integers(17, 33, size=2)
        out = upscaler(random_image(int(height), int(width), seed=index))
        assert out.shape == (height * 4, width * 4, 3) and out.dtype == np.uint8
    assert upscaler.compilations <= 3
    assert upscaler.compilations == len({s for s in upscaler.shapes})


def test_bicubic_upscaler_is_matlab_imresize_on_uint8():
    lr = random_image(13, 17, seed=6)
    np.testing.assert_array_equal(inference.BicubicUpscaler(4)(lr), np.asarray(imresize(lr, 4)))


def test_to_uint8_clips_and_rounds_half_up():
    values = np.array([-0.1, 0.0, 0.49 / 255, 0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0, 1.7], np.float32)
    np.testing.assert_array_equal(inference.to_uint8(values), [0, 0, 0, 1, 2, 255, 255, 255])


def test_bad_settings_are_one_line_errors():
    model, variables = tiny_model()
    with pytest.raises(ValueError, match="larger than 2 \\* tile_overlap"):
        inference.make_upscaler(model, variables=variables, tile=12)  # radius 6
    with pytest.raises(ValueError, match="variables are required"):
        inference.make_upscaler(model)
    with pytest.raises(ValueError, match="upscales x4, not x8"):
        inference.make_upscaler(model, 8, variables=variables)
