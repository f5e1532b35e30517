"""drn-jax: Dual Reconstruction Nets with the Gradient-Sensitive loss, in JAX/Flax.

Submodules are imported explicitly (``import drn_jax.losses``); nothing is imported eagerly
here so that light modules such as :mod:`drn_jax.losses` stay free of Flax and TensorFlow.
"""

__version__ = "0.1.0"
