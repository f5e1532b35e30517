"""Tests for drn_jax.losses: hand-computed values, invariants, gradients, dtypes, registry."""

import functools
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from drn_jax import losses

# The 3×3 test image, written out (one image, one channel), in tenths:
#     1 2 4
#     0 3 5
#     7 1 2
IMAGE_3X3 = np.array([[1, 2, 4], [0, 3, 5], [7, 1, 2]], np.float32).reshape(1, 3, 3, 1) / 10

# grad_h(r, c) = x(r, c-1) - x(r, c+1), only c = 1 is valid:
#   row 0: 1 - 4 = -3, row 1: 0 - 5 = -5, row 2: 7 - 2 = 5         (tenths)
GRAD_H_3X3 = np.array([[0, -3, 0], [0, -5, 0], [0, 5, 0]], np.float32).reshape(1, 3, 3, 1) / 10
# grad_v(r, c) = x(r-1, c) - x(r+1, c), only r = 1 is valid:
#   col 0: 1 - 7 = -6, col 1: 2 - 1 = 1, col 2: 4 - 2 = 2             (tenths)
GRAD_V_3X3 = np.array([[0, 0, 0], [-6, 1, 2], [0, 0, 0]], np.float32).reshape(1, 3, 3, 1) / 10

# The authors' epsilons (0-255 scale) moved to [0, 1].
SQRT_EPS = 1e-4 / 255**2
DEN_EPS = 1e-5 / 255


def mask_3x3_by_hand() -> np.ndarray:
    """Eq. 4 on IMAGE_3X3, in float64 from the written-out squared gradient magnitudes."""
    # gh² + gv² per pixel: the four corners have no valid gradient (0); the rest, in 1/100ths:
    #   (0,1): 3² = 9      (1,0): 6² = 36     (1,1): 5² + 1² = 26
    #   (1,2): 2² = 4      (2,1): 5² = 25
    squared = np.array([[0, 9, 0], [36, 26, 4], [0, 25, 0]], np.float64) / 100
    g = np.sqrt(squared + SQRT_EPS)
    low, high = np.sqrt(SQRT_EPS), np.sqrt(0.36 + SQRT_EPS)  # corners, pixel (1,0)
    return ((g - low) / (high - low + DEN_EPS)).reshape(1, 3, 3, 1)


def gs_loss_reference(pred, target, mask, lam):
    """Eq. 5 written literally (gradients of M⊙pred and M⊙target taken separately)."""
    ph, pv = losses.image_gradients(mask * pred)
    th, tv = losses.image_gradients(mask * target)
    pixel = jnp.mean(jnp.abs((1 - mask) * pred - (1 - mask) * target))
    return jnp.mean(jnp.abs(ph - th)) + jnp.mean(jnp.abs(pv - tv)) + lam * pixel


def random_images(seed, shape=(2, 8, 9, 3)):
    key_a, key_b = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(key_a, shape), jax.random.uniform(key_b, shape)


class ImageGradientsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed_3x3(self):
        grad_h, grad_v = self.variant(losses.image_gradients)(IMAGE_3X3)
        chex.assert_trees_all_close((grad_h, grad_v), (GRAD_H_3X3, GRAD_V_3X3), atol=1e-6)

    def test_shape_dtype_and_zero_borders(self):
        x = jax.random.uniform(jax.random.key(0), (2, 5, 6, 3), dtype=jnp.bfloat16)
        grad_h, grad_v = losses.image_gradients(x)
        chex.assert_shape((grad_h, grad_v), x.shape)
        chex.assert_type((grad_h, grad_v), jnp.bfloat16)
        np.testing.assert_array_equal(grad_h[:, :, [0, -1], :], 0)
        np.testing.assert_array_equal(grad_v[:, [0, -1], :, :], 0)

    def test_channels_independent_and_unbatched(self):
        # Channel k of the gradient only sees channel k (depthwise kernel).
        x = np.concatenate([IMAGE_3X3, 2 * IMAGE_3X3], axis=-1)[0]  # (3, 3, 2), no batch axis
        grad_h, grad_v = losses.image_gradients(x)
        chex.assert_trees_all_close(grad_h[..., 1], 2 * GRAD_H_3X3[0, ..., 0], atol=1e-6)
        chex.assert_trees_all_close(grad_v[..., 0], GRAD_V_3X3[0, ..., 0], atol=1e-6)

    @parameterized.parameters((1, 1), (2, 2), (1, 5), (5, 2))
    def test_tiny_images_give_zero(self, height, width):
        x = jnp.arange(height * width, dtype=jnp.float32).reshape(1, height, width, 1)
        grad_h, grad_v = losses.image_gradients(x)
        chex.assert_shape((grad_h, grad_v), x.shape)
        if width < 3:
            np.testing.assert_array_equal(grad_h, 0)
        if height < 3:
            np.testing.assert_array_equal(grad_v, 0)

    def test_rejects_non_image(self):
        with pytest.raises(ValueError, match="H, W, C"):
            losses.image_gradients(jnp.zeros((4, 4)))


class GradientMaskTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed_3x3(self):
        mask = self.variant(losses.gradient_mask)(IMAGE_3X3)
        chex.assert_type(mask, jnp.float32)
        chex.assert_trees_all_close(mask, mask_3x3_by_hand().astype(np.float32), atol=1e-6)
        # Readable spot values: (0,1) is ≈ 0.3/0.6, (1,2) ≈ 0.2/0.6.
        assert abs(float(mask[0, 0, 1, 0]) - 0.5) < 1e-4
        assert abs(float(mask[0, 1, 2, 0]) - 1 / 3) < 1e-4

    def test_range_min_exactly_zero_max_nearly_one(self):
        target, _ = random_images(1)
        mask = losses.gradient_mask(target)
        per_image_min = jnp.min(mask, axis=(1, 2, 3))
        per_image_max = jnp.max(mask, axis=(1, 2, 3))
        np.testing.assert_array_equal(per_image_min, 0.0)  # min over H×W×C per image
        assert np.all(per_image_max <= 1.0)
        assert np.all(per_image_max >= 1.0 - 1e-6)  # 1 - ε'/(range + ε')

    def test_min_max_per_image_not_per_batch(self):
        # Scaling one image of the batch must not change the other's mask, nor its own
        # (min-max normalisation is scale-free up to the tiny epsilons).
        target, _ = random_images(2)
        scaled = target.at[1].multiply(0.5)
        chex.assert_trees_all_close(
            losses.gradient_mask(scaled), losses.gradient_mask(target), atol=1e-4
        )

    def test_flat_image_gives_zero_mask(self):
        mask = losses.gradient_mask(jnp.full((2, 4, 4, 3), 0.7))
        np.testing.assert_array_equal(mask, 0.0)

    def test_scale_consistent_with_max_value(self):
        target, _ = random_images(3)
        chex.assert_trees_all_close(
            losses.gradient_mask(target * 255, max_value=255.0),
            losses.gradient_mask(target),
            atol=1e-5,
        )

    def test_no_gradient_through_mask(self):
        target, _ = random_images(4)
        grad = jax.grad(lambda t: jnp.sum(losses.gradient_mask(t)))(target)
        np.testing.assert_array_equal(grad, 0.0)


class LossValuesTest(chex.TestCase):
    @parameterized.parameters("gs", "l1", "mse", "gradient", "pixel_gradient")
    def test_zero_when_equal(self, name):
        target, _ = random_images(5)
        assert float(losses.get_loss(name)(target, target)) == 0.0

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_loss_hand_computed(self):
        # pred - target = IMAGE_3X3, so the loss is mean|grad_h| + mean|grad_v| of it:
        # (3 + 5 + 5)/9 + (6 + 1 + 2)/9 tenths = 13/90 + 9/90 = 22/90.
        loss = self.variant(losses.gradient_loss)(IMAGE_3X3, jnp.zeros_like(IMAGE_3X3))
        chex.assert_trees_all_close(loss, np.float32(22 / 90), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gs_loss_hand_computed(self):
        # target = IMAGE_3X3, pred = target except e(0,1) = +0.2 and e(1,0) = -0.1.
        # M⊙e is nonzero at (0,1) and (1,0) only. Its gradients:
        #   grad_h row 1, col 1: (M⊙e)(1,0) - (M⊙e)(1,2) = m10 · (-0.1)
        #   grad_v col 1, row 1: (M⊙e)(0,1) - (M⊙e)(2,1) = m01 · 0.2
        #   every other valid entry differences two zeros; borders are 0.
        # L_GS = (|0.2 m01| + |0.1 m10|)/9 + λ (|0.2 (1 - m01)| + |0.1 (1 - m10)|)/9.
        mask = mask_3x3_by_hand()[0, ..., 0]
        m01, m10 = mask[0, 1], mask[1, 0]  # ≈ 0.5 and ≈ 1 - 6.5e-8
        lam = 2.0
        expected = (0.2 * m01 + 0.1 * m10) / 9 + lam * (0.2 * (1 - m01) + 0.1 * (1 - m10)) / 9
        pred = IMAGE_3X3.copy()
        pred[0, 0, 1, 0] += 0.2
        pred[0, 1, 0, 0] -= 0.1
        loss = self.variant(functools.partial(losses.gs_loss, lam=lam))(pred, IMAGE_3X3)
        chex.assert_type(loss, jnp.float32)
        chex.assert_trees_all_close(loss, np.float32(expected), atol=1e-6)

    def test_gs_loss_matches_literal_eq5(self):
        pred, target = random_images(6)
        mask = losses.gradient_mask(target)
        chex.assert_trees_all_close(
            losses.gs_loss(pred, target, lam=1.5),
            gs_loss_reference(pred, target, mask, 1.5),
            rtol=1e-5,
        )

    def test_simple_losses_values(self):
        pred = jnp.array([0.0, 0.5, 1.0, 0.25]).reshape(1, 2, 2, 1)
        target = jnp.array([0.5, 0.5, 0.0, 0.25]).reshape(1, 2, 2, 1)
        # errors -0.5, 0, 1, 0 → L1 = 1.5/4, MSE = 1.25/4; 2×2 images have no valid gradient.
        chex.assert_trees_all_close(losses.l1_loss(pred, target), jnp.float32(0.375))
        chex.assert_trees_all_close(losses.mse_loss(pred, target), jnp.float32(0.3125))
        chex.assert_trees_all_close(
            losses.pixel_gradient_loss(pred, target, lam=3.0, pixel="l2"), jnp.float32(0.3125)
        )

    def test_pixel_gradient_is_pixel_plus_lambda_gradient(self):
        pred, target = random_images(7)
        for pixel, pixel_loss in (("l1", losses.l1_loss), ("l2", losses.mse_loss)):
            chex.assert_trees_all_close(
                losses.pixel_gradient_loss(pred, target, lam=0.7, pixel=pixel),
                pixel_loss(pred, target) + 0.7 * losses.gradient_loss(pred, target),
                rtol=1e-6,
            )
        with pytest.raises(ValueError, match="l1"):
            losses.pixel_gradient_loss(pred, target, pixel="huber")

    def test_gs_loss_scale_consistent(self):
        pred, target = random_images(8)
        chex.assert_trees_all_close(
            losses.gs_loss(pred * 255, target * 255, max_value=255.0),
            255 * losses.gs_loss(pred, target),
            rtol=1e-5,
        )

    @parameterized.parameters("gs", "l1", "mse", "gradient", "pixel_gradient")
    def test_batch_loss_is_mean_of_image_losses(self, name):
        loss = losses.get_loss(name)
        pred, target = random_images(9, (3, 6, 7, 3))
        per_image = [loss(pred[i : i + 1], target[i : i + 1]) for i in range(3)]
        chex.assert_trees_all_close(loss(pred, target), jnp.mean(jnp.stack(per_image)), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit_agree(self):
        pred, target = random_images(10)
        values = {
            name: self.variant(losses.get_loss(name))(pred, target) for name in losses.LOSSES
        }
        expected = {name: losses.get_loss(name)(pred, target) for name in losses.LOSSES}
        chex.assert_trees_all_close(values, expected, rtol=1e-6)

    def test_shape_mismatch_rejected(self):
        with pytest.raises(ValueError, match="same shape"):
            losses.gs_loss(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 1)))


class LossGradientsTest(chex.TestCase):
    def test_gs_gradient_treats_mask_as_constant(self):
        pred, target = random_images(11)
        fixed_mask = losses.gradient_mask(target)
        grads = jax.grad(losses.gs_loss, argnums=(0, 1))(pred, target)
        expected = jax.grad(
            lambda p, t: gs_loss_reference(p, t, fixed_mask, 2.0), argnums=(0, 1)
        )(pred, target)
        chex.assert_trees_all_close(grads, expected, atol=1e-7)

    @parameterized.parameters("gs", "l1", "mse", "gradient", "pixel_gradient")
    def test_constant_images_finite(self, name):
        loss = losses.get_loss(name)
        flat_target = jnp.full((2, 5, 5, 3), 0.5)
        for pred in (jnp.full((2, 5, 5, 3), 0.3), flat_target):
            value, grads = jax.value_and_grad(loss, argnums=(0, 1))(pred, flat_target)
            chex.assert_tree_all_finite((value, grads))
        # A black target (all zeros) as well: the sqrt sees only ε.
        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(
            jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 3))
        )
        chex.assert_tree_all_finite((value, grads))
        assert float(value) == 0.0

    @parameterized.parameters("gs", "l1", "mse", "gradient", "pixel_gradient")
    def test_bfloat16_inputs(self, name):
        loss = losses.get_loss(name)
        pred, target = random_images(12)
        pred16, target16 = pred.astype(jnp.bfloat16), target.astype(jnp.bfloat16)
        value, grad = jax.value_and_grad(loss)(pred16, target16)
        chex.assert_type(value, jnp.float32)
        chex.assert_type(grad, jnp.bfloat16)
        chex.assert_tree_all_finite((value, grad))
        # fp32 accumulation: close to the fp32 loss of the bf16-rounded images.
        reference = loss(pred16.astype(jnp.float32), target16.astype(jnp.float32))
        chex.assert_trees_all_close(value, reference, rtol=1e-6)


class RegistryTest(chex.TestCase):
    def test_registry_names(self):
        assert set(losses.LOSSES) == {"gs", "l1", "mse", "gradient", "pixel_gradient"}

    def test_get_loss_binds_lambda(self):
        pred, target = random_images(13)
        chex.assert_trees_all_close(
            losses.get_loss("gs", lam=0.5)(pred, target), losses.gs_loss(pred, target, lam=0.5)
        )
        chex.assert_trees_all_close(
            losses.get_loss("pixel_gradient", lam=0.5)(pred, target),
            losses.pixel_gradient_loss(pred, target, lam=0.5),
        )

    def test_unknown_name(self):
        with pytest.raises(ValueError, match=r"'charbonnier'.*gradient.*gs.*l1.*mse"):
            losses.get_loss("charbonnier")


class ObjectiveTest(chex.TestCase):
    def _levels(self):
        keys = jax.random.split(jax.random.key(14), 8)
        sizes = [(2, 4, 6, 3), (2, 8, 12, 3)]  # coarse → fine, ×4 from a 2×3 LR
        primal = [jax.random.uniform(k, s) for k, s in zip(keys[:2], sizes)]
        primal_targets = [jax.random.uniform(k, s) for k, s in zip(keys[2:4], sizes)]
        dual_sizes = [(2, 2, 3, 3), (2, 4, 6, 3)]
        dual = [jax.random.uniform(k, s) for k, s in zip(keys[4:6], dual_sizes)]
        dual_targets = [jax.random.uniform(k, s) for k, s in zip(keys[6:8], dual_sizes)]
        return primal, primal_targets, dual, dual_targets

    @chex.variants(with_jit=True, without_jit=True)
    def test_sums_terms_with_dual_weight(self):
        primal, primal_targets, dual, dual_targets = self._levels()
        objective = functools.partial(losses.drn_objective, lam=1.5, dual_weight=0.25)
        total, terms = self.variant(objective)(primal, primal_targets, dual, dual_targets)
        p = [losses.gs_loss(o, t, lam=1.5) for o, t in zip(primal, primal_targets)]
        d = [losses.gs_loss(o, t, lam=1.5) for o, t in zip(dual, dual_targets)]
        expected_terms = {
            "primal_0": p[0], "primal_1": p[1], "dual_0": d[0], "dual_1": d[1],
            "primal": p[0] + p[1], "dual": d[0] + d[1],
        }
        chex.assert_trees_all_close(terms, expected_terms, rtol=1e-6)
        chex.assert_trees_all_close(total, p[0] + p[1] + 0.25 * (d[0] + d[1]), rtol=1e-6)
        chex.assert_type(total, jnp.float32)

    def test_default_weight_and_other_loss(self):
        primal, primal_targets, dual, dual_targets = self._levels()
        total, terms = losses.drn_objective(primal, primal_targets, dual, dual_targets, loss="l1")
        chex.assert_trees_all_close(terms["primal_1"], losses.l1_loss(primal[1], primal_targets[1]))
        chex.assert_trees_all_close(total, terms["primal"] + 0.1 * terms["dual"], rtol=1e-6)

    def test_without_dual(self):
        primal, primal_targets, _, _ = self._levels()
        total, terms = losses.drn_objective(primal, primal_targets)
        assert set(terms) == {"primal", "dual", "primal_0", "primal_1"}
        assert float(terms["dual"]) == 0.0
        chex.assert_trees_all_close(total, terms["primal_0"] + terms["primal_1"], rtol=1e-6)

    def test_validation(self):
        primal, primal_targets, dual, dual_targets = self._levels()
        with pytest.raises(ValueError, match="1 targets"):
            losses.drn_objective(primal, primal_targets[:1])
        with pytest.raises(ValueError, match="primal level 1"):
            losses.drn_objective(primal, [primal_targets[0], primal_targets[0]])
        with pytest.raises(ValueError, match="both"):
            losses.drn_objective(primal, primal_targets, dual, None)
        with pytest.raises(ValueError, match="dual levels"):
            losses.drn_objective(primal, primal_targets, dual[:1], dual_targets[:1])
        with pytest.raises(ValueError, match="dual level 0"):
            losses.drn_objective(primal, primal_targets, dual, dual_targets[::-1])
        with pytest.raises(ValueError, match="at least one"):
            losses.drn_objective([], [])
        with pytest.raises(ValueError, match="unknown loss 'ssim'"):
            losses.drn_objective(primal, primal_targets, loss="ssim")


@pytest.mark.slow
def test_import_pulls_in_neither_flax_nor_tensorflow():
    code = (
        "import sys, drn_jax, drn_jax.losses; "
        "bad = [m for m in ('flax', 'tensorflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
