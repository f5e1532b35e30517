"""Tests for drn_jax.models: shapes, parameter counts, options, dtypes, pixel shuffle."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import traverse_util

from drn_jax import losses
from drn_jax.models import (
    DRN,
    DualBlock,
    count_params,
    expected_param_count,
    pixel_shuffle,
)

SMALL = dict(features=8, modules_per_block=1)


def lr_batch(height=6, width=5, batch=2, seed=0):
    return jax.random.uniform(jax.random.key(seed), (batch, height, width, 3))


# Eager on purpose: XLA caches each eager op's compilation across the many small model
# configurations here, whereas jitting would compile a whole new program for each (slower).
def init(model, lr):
    return model.init(jax.random.key(42), lr)


def apply(model, variables, lr, **kwargs):
    return model.apply(variables, lr, **kwargs)


def param_paths(variables):
    return set(traverse_util.flatten_dict(variables["params"], sep="/"))


class PixelShuffleTest(chex.TestCase):
    def test_matches_explicit_loop_torch_order(self):
        r, channels = 2, 3
        x = np.arange(2 * 3 * 4 * channels * r * r, dtype=np.float32).reshape(2, 3, 4, -1)
        expected = np.zeros((2, 6, 8, channels), np.float32)
        for h in range(3):
            for w in range(4):
                for c in range(channels):
                    for i in range(r):
                        for j in range(r):
                            expected[:, h * r + i, w * r + j, c] = x[:, h, w, c * r * r + i * r + j]
        np.testing.assert_array_equal(pixel_shuffle(jnp.asarray(x), r), expected)

    def test_one_pixel_example(self):
        # One pixel, channels [a0 a1 a2 a3 | b0 b1 b2 b3] → two 2×2 channels [[a0 a1], [a2 a3]].
        x = jnp.arange(8.0).reshape(1, 1, 1, 8)
        out = pixel_shuffle(x, 2)
        np.testing.assert_array_equal(out[0, :, :, 0], [[0, 1], [2, 3]])
        np.testing.assert_array_equal(out[0, :, :, 1], [[4, 5], [6, 7]])

    def test_bad_channel_count(self):
        with pytest.raises(ValueError, match="multiple"):
            pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)


class ShapesTest(chex.TestCase):
    @parameterized.parameters((2, 6, 5), (4, 6, 5), (8, 6, 5), (4, 7, 9), (8, 7, 9))
    def test_primal_and_dual_shapes(self, scale, height, width):
        lr = lr_batch(height, width)
        model = DRN(scale, **SMALL)
        out = apply(model, init(model, lr), lr)
        levels = int(np.log2(scale))
        chex.assert_shape(
            out.primal, [(2, height * 2**i, width * 2**i, 3) for i in range(1, levels + 1)]
        )
        chex.assert_shape(out.primal[-1], (2, height * scale, width * scale, 3))
        # dual[i] = D_i(primal[i]) sits at level i-1's resolution: dual[0] at the LR size.
        chex.assert_shape(out.dual, [(2, height * 2**i, width * 2**i, 3) for i in range(levels)])
        for primal, dual in zip(out.primal, out.dual):
            assert dual.shape[1] * 2 == primal.shape[1] and dual.shape[2] * 2 == primal.shape[2]
        chex.assert_type(out.primal + out.dual, jnp.float32)

    @parameterized.parameters((8, 8, 4, 4), (7, 9, 4, 5), (1, 2, 1, 1))
    def test_dual_block_halves_with_ceil(self, height, width, out_height, out_width):
        block = DualBlock(features=4)
        x = jnp.ones((1, height, width, 3))
        y = apply(block, init(block, x), x)
        chex.assert_shape(y, (1, out_height, out_width, 3))

    def test_dual_block_samples_even_pixels(self):
        # Padding 1 on each side (PyTorch padding=1): output pixel j is centred on input 2j.
        # A kernel that only reads its centre tap must then return x[::2, ::2].
        block = DualBlock(features=3)
        x = jax.random.uniform(jax.random.key(1), (1, 8, 6, 3))
        variables = init(block, x)
        identity_centre = jnp.zeros((3, 3, 3, 3)).at[1, 1].set(jnp.eye(3))
        params = {
            "down": {"kernel": identity_centre, "bias": jnp.zeros(3)},
            "to_rgb": {"kernel": identity_centre, "bias": jnp.zeros(3)},
        }
        chex.assert_trees_all_equal_shapes(params, variables["params"])
        y = apply(block, {"params": params}, x)
        chex.assert_trees_all_close(y, x[:, ::2, ::2, :], atol=1e-6)  # x ≥ 0, so ReLU is a no-op

    def test_rejects_non_rgb_input(self):
        model = DRN(2, **SMALL)
        with pytest.raises(ValueError, match="NHWC"):
            init(model, jnp.zeros((1, 4, 4, 1)))


class OptionsTest(chex.TestCase):
    def test_no_dual(self):
        lr = lr_batch()
        model = DRN(4, dual=False, **SMALL)
        variables = init(model, lr)
        out = apply(model, variables, lr)
        assert out.dual is None
        assert len(out.primal) == 2
        assert not any(path.startswith("dual") for path in param_paths(variables))
        assert count_params(variables) == expected_param_count(4, 8, 1, dual=False)

    def test_not_progressive(self):
        lr = lr_batch(7, 9)
        model = DRN(8, progressive=False, **SMALL)
        variables = init(model, lr)
        out = apply(model, variables, lr)
        chex.assert_shape(out.primal, [(2, 56, 72, 3)])
        chex.assert_shape(out.dual, [(2, 7, 9, 3)])  # the chain of 3 dual blocks back to LR
        paths = param_paths(variables)
        assert "primal_blocks_2/to_rgb/kernel" in paths
        assert "primal_blocks_0/to_rgb/kernel" not in paths
        assert "primal_blocks_1/to_rgb/kernel" not in paths
        assert {p.split("/")[0] for p in paths if p.startswith("dual")} == {
            "dual_blocks_0", "dual_blocks_1", "dual_blocks_2"
        }

    def test_not_progressive_dual_chains_finest_first(self):
        lr = lr_batch(4, 4)
        model = DRN(4, progressive=False, **SMALL)
        variables = init(model, lr)
        out = apply(model, variables, lr)
        params = variables["params"]
        block = DualBlock(features=8)
        # D_1 (level-2 image → level 1) first, then D_0 (→ LR).
        middle = apply(block, {"params": params["dual_blocks_1"]}, out.primal[0])
        expected = apply(block, {"params": params["dual_blocks_0"]}, middle)
        chex.assert_trees_all_close(out.dual[0], expected, atol=1e-6)

    def test_image_residual_with_zero_weights_is_upsampled_lr(self):
        # All weights zero → every to_rgb gives 0, so each level is the linear upsampling of
        # the level below, down to the LR input; a constant LR stays that constant.
        lr = jnp.full((1, 3, 5, 3), 0.3)
        for progressive in (True, False):
            model = DRN(4, image_residual=True, progressive=progressive, **SMALL)
            variables = jax.tree_util.tree_map(jnp.zeros_like, init(model, lr))
            out = apply(model, variables, lr)
            chex.assert_trees_all_close(
                out.primal, tuple(jnp.full_like(p, 0.3) for p in out.primal), atol=1e-6
            )
        # And a non-constant LR: the final image is the resize of the resize of the LR.
        lr = lr_batch(3, 5, batch=1)
        model = DRN(4, image_residual=True, dual=False, **SMALL)
        variables = jax.tree_util.tree_map(jnp.zeros_like, init(model, lr))
        out = apply(model, variables, lr)
        level1 = jax.image.resize(lr, (1, 6, 10, 3), "linear")
        chex.assert_trees_all_close(out.primal[0], level1, atol=1e-6)
        chex.assert_trees_all_close(
            out.primal[1], jax.image.resize(level1, (1, 12, 20, 3), "linear"), atol=1e-6
        )

    @parameterized.parameters(
        dict(progressive=True, image_residual=False),
        dict(progressive=True, image_residual=True),
        dict(progressive=False, image_residual=False),
        dict(progressive=False, image_residual=True),
    )
    def test_upscale_equals_final_primal(self, progressive, image_residual):
        lr = lr_batch(5, 4)
        model = DRN(4, progressive=progressive, image_residual=image_residual, **SMALL)
        variables = init(model, lr)
        full = apply(model, variables, lr).primal[-1]
        upscaled = apply(model, variables, lr, method=DRN.upscale)
        chex.assert_trees_all_close(upscaled, full, atol=1e-6)
        chex.assert_trees_all_close(apply(model, variables, lr, method="upscale"), full, atol=1e-6)

    def test_scale_validated_at_construction(self):
        for scale in (1, 3, 16):
            with pytest.raises(ValueError, match="2, 4, 8"):
                DRN(scale)
        with pytest.raises(ValueError, match="2, 4, 8"):
            expected_param_count(3)

    def test_bfloat16_compute(self):
        lr = lr_batch(4, 4)
        model = DRN(4, dtype=jnp.bfloat16, **SMALL)
        variables = init(model, lr)
        chex.assert_type(jax.tree_util.tree_leaves(variables), jnp.float32)  # param_dtype
        out = apply(model, variables, lr)
        chex.assert_type(out.primal + out.dual, jnp.float32)
        chex.assert_tree_all_finite(out)
        reference = apply(DRN(4, **SMALL), variables, lr)
        chex.assert_trees_all_close(out.primal[-1], reference.primal[-1], atol=0.05)
        chex.assert_type(apply(model, variables, lr, method="upscale"), jnp.float32)


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_apply_jit_and_no_jit_agree(self):
        lr = lr_batch(4, 4)
        model = DRN(2, **SMALL)
        variables = init(model, lr)
        out = self.variant(model.apply)(variables, lr)
        expected = jax.jit(model.apply)(variables, lr)
        chex.assert_trees_all_close(out, expected, atol=1e-6)


class ParamsTest(chex.TestCase):
    def test_x4_default_count_by_hand(self):
        # A 3×3 conv from a to b channels: 9·a·b weights + b biases. F = 64, R = 7, S = 2.
        head = 3 * 64 * 9 + 64  # 1,792
        residual = 2 * (64 * 64 * 9 + 64)  # 73,856 per module
        upsample = 64 * 256 * 9 + 256  # 147,712 per block
        to_rgb = 64 * 3 * 9 + 3  # 1,731 per level
        dual = (3 * 64 * 9 + 64) + (64 * 3 * 9 + 3)  # 3,523 per level
        by_hand = head + 2 * (7 * residual + upsample + to_rgb + dual)
        assert by_hand == 1_341_708
        shapes = jax.eval_shape(DRN(4).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        assert count_params(shapes) == by_hand
        assert expected_param_count(4) == by_hand

    @parameterized.parameters(
        (2, 8, 1, True, True),
        (4, 8, 2, False, True),
        (8, 4, 1, True, False),
        (8, 4, 0, False, False),
        (8, 64, 7, True, True),
    )
    def test_matches_expected_param_count(self, scale, features, modules, dual, progressive):
        model = DRN(scale, features, modules, dual=dual, progressive=progressive)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
        assert count_params(shapes["params"]) == expected_param_count(
            scale, features, modules, dual, progressive
        )

    def test_init_is_pytorch_default_like(self):
        lr = lr_batch(4, 4)
        variables = init(DRN(2, features=32, modules_per_block=1), lr)
        params = variables["params"]["primal_blocks_0"]
        kernel = params["residual_0"]["conv_0"]["kernel"]  # fan_in = 9 · 32
        bound = 1 / np.sqrt(9 * 32)
        assert float(jnp.max(jnp.abs(kernel))) <= bound
        # U(-b, b) has standard deviation b / sqrt(3).
        np.testing.assert_allclose(float(jnp.std(kernel)), bound / np.sqrt(3), rtol=0.05)
        np.testing.assert_array_equal(params["residual_0"]["conv_0"]["bias"], 0.0)


def test_every_parameter_gets_a_gradient_from_the_objective():
    lr = lr_batch(4, 4, seed=3)
    hr = lr_batch(16, 16, seed=4)
    model = DRN(4, features=4, modules_per_block=1)
    variables = init(model, lr)
    targets = [jax.image.resize(hr, (2, 8, 8, 3), "cubic"), hr]

    def objective(params):
        out = model.apply({"params": params}, lr)
        total, _ = losses.drn_objective(out.primal, targets, out.dual, [lr, targets[0]])
        return total

    grads = jax.grad(objective)(variables["params"])
    chex.assert_tree_all_finite(grads)
    for path, grad in traverse_util.flatten_dict(grads, sep="/").items():
        assert float(jnp.max(jnp.abs(grad))) > 0, path


def test_remat_recomputes_the_same_values_and_gradients():
    """`remat=True` only changes what is stored for the backward pass: same parameter tree,
    outputs and gradients as the plain model."""
    lr = lr_batch(4, 4, seed=5)
    hr = lr_batch(16, 16, seed=6)
    targets = [jax.image.resize(hr, (2, 8, 8, 3), "cubic"), hr]
    plain = DRN(4, features=8, modules_per_block=2)
    rematerialised = DRN(4, features=8, modules_per_block=2, remat=True)
    variables = init(plain, lr)
    assert param_paths(init(rematerialised, lr)) == param_paths(variables)

    def objective(model):
        def total(params):
            out = model.apply({"params": params}, lr)
            return losses.drn_objective(out.primal, targets, out.dual, [lr, targets[0]])[0]
        return jax.jit(jax.value_and_grad(total))(variables["params"])

    (plain_loss, plain_grads), (remat_loss, remat_grads) = objective(plain), objective(rematerialised)
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    chex.assert_trees_all_close(remat_grads, plain_grads, rtol=1e-5, atol=1e-7)
