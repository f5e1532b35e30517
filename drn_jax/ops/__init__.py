"""Array-level operations behind the DRN modules, free of Flax (``drn_jax.ops`` never imports
:mod:`drn_jax.models`).

* :func:`conv3x3`: the 3×3 convolution (+ bias, + pixel shuffle) with an explicit ``algorithm``,
  one of :data:`CONV_ALGORITHMS` = ``("auto", "winograd", "xla", "packed")``, and
  :func:`resolve_conv_algorithm`, what a DRN's ``"auto"`` stands for on a platform;
* :func:`pixel_shuffle`: PyTorch-order depth to space;
* :func:`zero_outside`, :func:`replicate_edges`, :func:`scaled_sizes`, :func:`valid_mask`:
  valid-region masks that make a zero-padded batch compute what its unpadded images would
  (:mod:`drn_jax.ops.mask`);
* :func:`dihedral`: each image of a batch under its own flip/rotation (training's augmentation,
  applied on the device);
* :mod:`drn_jax.ops.winograd`: the Winograd F(4×4, 3×3) and shifted-sum convolutions for CPU;
* :mod:`drn_jax.ops.packed`: the convolution on two pixels packed into 128 lanes, for TPUs.
"""

from drn_jax.ops.conv import (
    CONV_ALGORITHMS,
    CPU_INFERENCE_WINOGRAD_MIN_FEATURES,
    check_conv_algorithm,
    conv3x3,
    conv3x3_path,
    pixel_shuffle,
    resolve_conv_algorithm,
)
from drn_jax.ops.dihedral import dihedral
from drn_jax.ops.mask import replicate_edges, scaled_sizes, valid_mask, zero_outside

__all__ = ["CONV_ALGORITHMS", "CPU_INFERENCE_WINOGRAD_MIN_FEATURES", "check_conv_algorithm", "conv3x3",
           "conv3x3_path", "dihedral", "pixel_shuffle", "replicate_edges", "resolve_conv_algorithm",
           "scaled_sizes", "valid_mask", "zero_outside"]
