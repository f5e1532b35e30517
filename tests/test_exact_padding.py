"""Padding changes no output value: bucketed and batched DRN runs equal unpadded ones."""

import jax
import numpy as np

from drn_jax import inference, loading
from drn_jax.ops import replicate_edges, zero_outside
from helpers import tiny_model


def random_image(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_masks_by_hand():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4, 1) + 1
    sizes = np.array([[2, 3], [3, 1]], np.int32)
    zeroed = np.asarray(zero_outside(x, sizes))
    expected = x.copy()
    expected[0, 2:] = 0
    expected[0, :, 3:] = 0
    expected[1, :, 1:] = 0
    np.testing.assert_array_equal(zeroed, expected)
    edges = np.asarray(replicate_edges(x, sizes))
    # image 0: rows 0-1 valid, cols 0-2 valid; row 2 copies row 1, col 3 copies col 2.
    np.testing.assert_array_equal(edges[0, 2], edges[0, 1])
    np.testing.assert_array_equal(edges[0, :, 3], x[0, [0, 1, 1], 2])
    np.testing.assert_array_equal(edges[1], np.repeat(x[1, :, :1], 4, axis=1))


def test_padded_batch_equals_each_image_alone():
    """Every output of __call__ (primal levels and dual reconstructions) and of upscale, at x8
    with the image residual (three levels, bilinear interpolation at the borders)."""
    scale = 8
    model, variables = tiny_model(scale, True)
    forward = jax.jit(model.apply)
    rng = np.random.default_rng(1)
    shapes = [(13, 21), (7, 5), (24, 24)]
    batch = rng.random((3, 24, 24, 3), dtype=np.float32)  # non-zero padding: must be ignored
    for k, (h, w) in enumerate(shapes):
        batch[k, :h, :w] = rng.random((h, w, 3), dtype=np.float32)
    sizes = np.array(shapes, np.int32)
    padded = forward(variables, batch, sizes)
    upscaled = np.asarray(jax.jit(lambda v, x, s: model.apply(v, x, s, method="upscale"))(
        variables, batch, sizes))
    for k, (h, w) in enumerate(shapes[:2]):
        alone = forward(variables, batch[k:k + 1, :h, :w])
        for got, want in zip(padded.primal + padded.dual, alone.primal + alone.dual):
            got, want = np.asarray(got)[k], np.asarray(want)[0]
            np.testing.assert_allclose(got[: want.shape[0], : want.shape[1]], want, atol=2e-6)
            assert not got[want.shape[0]:].any() and not got[:, want.shape[1]:].any()
        np.testing.assert_allclose(upscaled[k, : h * scale, : w * scale],
                                   np.asarray(alone.primal[-1])[0], atol=2e-6)


def test_bucketed_shipped_x4_equals_exact_shapes():
    """The shipped x4 model through the bucketed Upscaler equals its unpadded run, per image."""
    _, model, variables = loading.load_model(pretrained="x4")
    upscaler = inference.make_upscaler(model, variables=variables)
    exact = jax.jit(lambda v, x: model.apply(v, x, method="upscale"))
    for seed, (h, w) in enumerate([(13, 21), (23, 17)]):  # one bucket, 24
        lr = random_image(h, w, seed)
        want = np.asarray(exact(variables, lr[None].astype(np.float32) / 255))[0]
        got = upscaler.upscale_float(lr)
        assert got.shape == want.shape == (4 * h, 4 * w, 3)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert upscaler.shapes == [(1, 24, 24, 3)]


def test_mirror_padding_is_what_plain_functions_get():
    """A predict function without sizes sees the edge-repeating mirror past the image."""
    seen = []

    def predict(batch):
        seen.append(batch.copy())
        return np.repeat(np.repeat(batch, 2, axis=1), 2, axis=2)

    lr = random_image(5, 3, 0)
    out = inference.make_upscaler(predict, 2).upscale_float(lr)
    np.testing.assert_array_equal(out, np.repeat(np.repeat(lr / np.float32(255), 2, 0), 2, 1))
    (batch,) = seen
    np.testing.assert_array_equal(batch[0, 5], batch[0, 4])  # row 5 mirrors row 4
    np.testing.assert_array_equal(batch[0, :5, 3], batch[0, :5, 2])
