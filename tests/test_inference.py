"""Whole-image inference: receptive field, exact tiling, self-ensemble, size buckets."""


import jax
import numpy as np
import pytest

from drn_jax import inference, models
from drn_jax.resize import imresize
from helpers import tiny_model


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
    for length, tile, overlap in [(20, 20, 6), (37, 20, 6), (45, 20, 3), (1000, 256, 24), (481, 192, 21)]:
        spans = inference.tile_spans(length, tile, overlap)
        assert spans[0][1] == 0 and spans[-1][2] == length
        for (start, lo, hi), nxt in zip(spans, spans[1:] + [None]):
            assert 0 <= start and start + tile <= length
            if nxt is not None:
                assert hi == nxt[1]  # contiguous, no gaps or double writes
                assert hi <= start + tile - overlap and nxt[1] >= nxt[0] + overlap  # context kept
        # The fewest tiles: one less cannot cover the axis with that context.
        count = len(spans)
        assert count == 1 or (count - 1) * tile - 2 * overlap * (count - 2) < length
        # Evenly spread: the steps between starts differ by at most one pixel.
        steps = {b[0] - a[0] for a, b in zip(spans, spans[1:])}
        assert not steps or max(steps) - min(steps) <= 1
    # Hand-computed: 3 tiles of 192 over 481 start at 0, 144, 289; the boundaries lie in the
    # middle of the shared parts, (144 + 192) // 2 = 168 and (289 + 336) // 2 = 312.
    assert inference.tile_spans(481, 192, 21) == [(0, 0, 168), (144, 168, 312), (289, 312, 481)]
    with pytest.raises(ValueError, match="larger than 2 \\* tile_overlap"):
        inference.tile_spans(40, 12, 6)


def counting_upscaler(tile: int, overlap: int, self_ensemble: bool = False):
    """(upscaler at scale 1 whose network is the identity, list of the blocks it is given)."""
    seen = []

    def predict(batch):
        seen.append(batch.shape)
        return batch

    return inference.make_upscaler(predict, 1, tile=tile, tile_overlap=overlap,
                                   self_ensemble=self_ensemble), seen


def test_tiles_fit_the_image():
    """The default tiling of a photo up to 4 tile budgets in area computes at most 1.3× its
    pixels, overlap and padding included; each tile holds at most the budget."""
    tile, overlap = 256, 21  # drn-upscale's default tile; the shipped x4 model's radius
    upscaler, seen = counting_upscaler(tile, overlap)
    image = np.zeros((4 * tile, 4 * tile, 3), np.uint8)
    # A BSD200 photo: 3 tiles of 336×192 (2×3 tiles of 256² before: 2.55×).
    upscaler(image[:321, :481])
    assert seen == [(1, 336, 192, 3)] * 3
    assert 3 * 336 * 192 / (321 * 481) < 1.26
    worst = 0.0
    for height in range(128, 4 * tile, 19):
        for width in range(height, 3 * height + 1, 23):  # aspect ratios up to 3:1
            if height * width > 4 * tile * tile:
                break
            for shape in ((height, width), (width, height)):
                seen.clear()
                upscaler(image[: shape[0], : shape[1]])
                work = sum(h * w * n for n, h, w, _ in seen)
                assert all(h * w <= tile * tile for _, h, w, _ in seen), (shape, seen)
                assert len(set(seen)) == 1, (shape, seen)  # one tile shape per image
                worst = max(worst, work / (shape[0] * shape[1]))
                assert work <= 1.3 * shape[0] * shape[1], (shape, seen)
    assert worst > 1.2  # the sweep reaches the hard cases


def test_similar_images_share_their_tile_shape():
    # Photos within a few pixels of each other compile once; sides are multiples of 16
    # (heights 321 to 335 round up to 336, widths 475 to 487 need tiles of 187 to 191).
    shapes = {inference.plan_tiles(321 + dh, 481 + dw, 256, 21).shape
              for dh in range(0, 15, 2) for dw in range(-6, 7, 3)}
    assert shapes == {(336, 192)}
    # Hand-computed: 100×70 fits one tile, rounded up to 112×80. 700×500: 4 rows need
    # (700 + 3·42) / 4 = 206.5 → 208, 2 columns (500 + 42) / 2 = 271 → 272; 208·272 <= 256².
    plan = inference.plan_tiles(100, 70, 256, 21)
    assert (plan.shape, plan.count) == ((112, 80), 1)
    plan = inference.plan_tiles(700, 500, 256, 21)
    assert (plan.shape, len(plan.rows), len(plan.cols)) == ((208, 272), 4, 2)
    # The self-ensemble's tiles are square, so that its rotations keep the shape.
    assert inference.plan_tiles(321, 481, 256, 21, square=True).shape == (192, 192)


@pytest.mark.parametrize("shape", [(37, 45), (45, 15), (9, 14), (60, 23)])
def test_tiled_equals_untiled_with_enough_overlap(shape):
    model, variables = tiny_model()
    radius = inference.receptive_field_radius(model)
    lr = random_image(*shape)
    untiled = np.asarray(model.apply(variables, lr[None].astype(np.float32) / 255, method="upscale"))[0]

    tiled = inference.make_upscaler(model, variables=variables, tile=20)  # overlap: the radius
    assert tiled.tile_overlap == radius
    np.testing.assert_allclose(tiled.upscale_float(lr), untiled, atol=1e-5)
    plan = tiled.plan(*shape)
    assert tiled.shapes == [(1, *plan.shape, 3)]  # one tile shape, one compilation
    assert plan.shape[0] * plan.shape[1] <= 20 * 20

    if plan.count > 1:  # one pixel less context and the tile seams show: the test can fail
        short = inference.make_upscaler(model, variables=variables, tile=20, tile_overlap=radius - 1)
        assert np.abs(short.upscale_float(lr) - untiled).max() > 1e-4


def test_tile_plans_of_the_test_images():
    # A side shorter than its tile is padded (45×15: 3 tiles of 23×15 → 15 is one column, no
    # padding; 9×14: one tile of 12×16, padded by 3 rows and 2 columns).
    assert inference.plan_tiles(45, 15, 20, 6).shape == (23, 15)
    plan = inference.plan_tiles(9, 14, 20, 6)
    assert (plan.shape, plan.rows, plan.cols) == ((12, 16), ((0, 0, 12),), ((0, 0, 16),))


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
    assert tiled.plan(29, 35).shape == (20, 20) and tiled.plan(29, 35).count == 9


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
