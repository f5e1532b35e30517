"""The gradient mask of Eq. 4 is min-max normalised per image over H × W × C together.

Not per channel, not over the batch: an image's mask (and so its share of ``gs_loss``) depends
on that image alone, and one channel with a small range is not stretched to [0, 1].
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from drn_jax import losses


def np_gradients(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences without ½, zero on the first/last column (h) and row (v)."""
    gh = np.zeros_like(x)
    gv = np.zeros_like(x)
    gh[..., :, 1:-1, :] = x[..., :, :-2, :] - x[..., :, 2:, :]
    gv[..., 1:-1, :, :] = x[..., :-2, :, :] - x[..., 2:, :, :]
    return gh, gv


def np_magnitude(x: np.ndarray, max_value: float) -> np.ndarray:
    sqrt_eps = 1e-4 * (max_value / 255.0) ** 2  # the authors' ε = 1e-4 on the 0-255 scale
    gh, gv = np_gradients(np.asarray(x, np.float64))
    return np.sqrt(gh**2 + gv**2 + sqrt_eps)


def np_mask(x: np.ndarray, max_value: float = 1.0, axes=(-3, -2, -1)) -> np.ndarray:
    """Eq. 4 by hand: ``(G - min G) / (max G - min G + ε')``, min/max over ``axes``."""
    denominator_eps = 1e-5 * max_value / 255.0  # ε' = 1e-5 on the 0-255 scale
    g = np_magnitude(x, max_value)
    low = g.min(axis=axes, keepdims=True)
    high = g.max(axis=axes, keepdims=True)
    return (g - low) / (high - low + denominator_eps)


def np_gs_loss(pred, target, mask, lam=2.0):
    error = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    gh, gv = np_gradients(mask * error)
    return np.mean(np.abs(gh)) + np.mean(np.abs(gv)) + lam * np.mean(np.abs((1.0 - mask) * error))


def two_images(max_value: float = 1.0) -> np.ndarray:
    """(2, 12, 10, 3): image 1 with channels of very different ranges, image 2 = 0.4 · image 1."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 1.0, (12, 10, 3))
    ranges = np.array([1.0, 0.15, 0.04])  # red spans [0, 1], green [0.3, 0.45], blue [0.6, 0.64]
    offsets = np.array([0.0, 0.3, 0.6])
    image = offsets + ranges * base
    batch = np.stack([image, 0.4 * image]) * max_value
    if max_value == 255.0:
        batch = np.round(batch)
    return batch.astype(np.float32)


@pytest.mark.parametrize("max_value", [1.0, 255.0])
def test_mask_equals_hand_computed_per_image_normalisation(max_value):
    batch = two_images(max_value)
    mask = np.asarray(losses.gradient_mask(jnp.asarray(batch), max_value=max_value))
    expected = np_mask(batch, max_value)  # per image: over H, W and C together
    assert mask.dtype == np.float32 and mask.shape == batch.shape
    np.testing.assert_allclose(mask, expected, rtol=1e-5, atol=1e-6)
    for image in range(2):
        assert mask[image].min() == 0.0
        assert 0.99 < mask[image].max() <= 1.0  # 1 - ε'/(max G - min G + ε'), 1 in float32


def test_mask_is_not_normalised_per_channel():
    batch = two_images()
    mask = np.asarray(losses.gradient_mask(jnp.asarray(batch)))
    per_channel = np_mask(batch, axes=(-3, -2))  # min-max over H × W per channel
    # Per channel, the flat blue channel would be stretched to [0, 1]; per image it stays small.
    assert per_channel[0, ..., 2].max() > 0.99
    assert mask[0, ..., 2].max() < 0.2
    assert np.max(np.abs(mask - per_channel)) > 0.5


def test_mask_is_not_normalised_over_the_batch():
    batch = two_images()
    mask = np.asarray(losses.gradient_mask(jnp.asarray(batch)))
    # Image 2 is image 1 times 0.4: per image the two masks agree up to the ε's (which do not
    # scale with the image); normalised over the batch image 2's mask would be ~0.4× image 1's.
    np.testing.assert_allclose(mask[1], mask[0], atol=1e-3)  # observed 5e-5
    per_batch = np_mask(batch, axes=(0, 1, 2, 3))
    assert per_batch[1].max() < 0.45
    assert np.max(np.abs(mask - per_batch)) > 0.5


def test_mask_of_one_image_does_not_depend_on_the_other():
    batch = two_images()
    other = batch.copy()
    other[1] = np.random.default_rng(5).uniform(0.0, 1.0, other[1].shape)  # a different image 2
    first = np.asarray(losses.gradient_mask(jnp.asarray(batch)))
    second = np.asarray(losses.gradient_mask(jnp.asarray(other)))
    assert np.max(np.abs(first[1] - second[1])) > 0.1  # image 2's mask did change
    np.testing.assert_array_equal(second[0], first[0])
    np.testing.assert_allclose(second[1], np_mask(other[1:])[0], rtol=1e-5, atol=1e-6)
    # ... and equals the mask of image 1 alone.
    np.testing.assert_allclose(first[0], np.asarray(losses.gradient_mask(jnp.asarray(batch[:1])))[0],
                               rtol=1e-6, atol=1e-7)


def test_gs_loss_uses_the_per_image_mask():
    batch = two_images()
    pred = np.clip(batch + np.random.default_rng(1).normal(0.0, 0.05, batch.shape), 0.0, 1.0).astype(np.float32)
    value = float(losses.gs_loss(jnp.asarray(pred), jnp.asarray(batch), lam=2.0))
    expected = np_gs_loss(pred, batch, np_mask(batch), lam=2.0)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # Same-shaped images: the batch's loss is the mean of the images' losses.
    singles = [float(losses.gs_loss(jnp.asarray(pred[i:i + 1]), jnp.asarray(batch[i:i + 1]))) for i in range(2)]
    np.testing.assert_allclose(value, np.mean(singles), rtol=1e-5)
    # With the mask normalised per channel or over the batch the loss would be another number.
    for axes in ((-3, -2), (0, 1, 2, 3)):
        wrong = np_gs_loss(pred, batch, np_mask(batch, axes=axes), lam=2.0)
        assert abs(wrong - expected) > 1e-3 * expected, axes
