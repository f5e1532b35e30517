"""Small DRNs with random weights, shared by the inference, evaluation and upscaler tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from drn_jax import models


@functools.lru_cache(maxsize=None)
def tiny_model(scale: int = 4, image_residual: bool = False):
    """A small DRN (F=8, one module per block) with random variables drawn in NumPy.

    Not ``model.init``: jax.random's threefry takes seconds to compile on CPU, and any random
    weights do here. Kernels follow PyTorch's default bound; biases are non-zero so that zero
    padding and ReLUs act as in a trained network.
    """
    model = models.DRN(scale, features=8, modules_per_block=1, image_residual=image_residual)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
    rng = np.random.default_rng(0)

    def draw(leaf):
        if len(leaf.shape) == 4:  # (3, 3, in, out)
            bound = 1.0 / np.sqrt(np.prod(leaf.shape[:3]))
            return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return model, jax.tree.map(draw, shapes)
