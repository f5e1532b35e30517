"""The CPU convolution algorithms in drn_jax.models equal XLA's direct convolution."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drn_jax import models


def direct(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("channels_in,channels_out,height,width", [
    (32, 32, 9, 13),   # Winograd, sizes not multiples of the 4-pixel tile
    (16, 64, 8, 8),    # Winograd, wider output
    (32, 3, 7, 10),    # matrix product + shifted sum (to RGB)
])
def test_conv3x3_value_and_gradients_equal_direct_convolution(channels_in, channels_out, height, width,
                                                               monkeypatch):
    monkeypatch.setenv("DRN_JAX_CONV", "auto")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, height, width, channels_in)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, channels_in, channels_out)) / np.sqrt(9 * channels_in),
                         jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((2, height, width, channels_out)), jnp.float32)

    def pulled(conv):
        value, vjp = jax.vjp(conv, x, kernel)
        return value, vjp(cotangent)

    expected = pulled(direct)
    actual = jax.jit(lambda: pulled(models.conv3x3))()
    chex.assert_trees_all_close(actual, expected, atol=2e-4, rtol=2e-4)


def test_drn_outputs_do_not_depend_on_the_algorithm(monkeypatch):
    model = models.DRN(4, features=16, modules_per_block=1)
    lr = jax.random.uniform(jax.random.key(1), (1, 10, 12, 3))
    variables = model.init(jax.random.key(0), lr)
    results = {}
    for algorithm in ("direct", "winograd"):
        monkeypatch.setenv("DRN_JAX_CONV", algorithm)
        loss = lambda params: jnp.mean(model.apply({"params": params}, lr).primal[-1] ** 2)
        results[algorithm] = jax.jit(jax.value_and_grad(loss))(variables["params"])
    chex.assert_trees_all_close(results["winograd"], results["direct"], atol=1e-5, rtol=1e-3)
