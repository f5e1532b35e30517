"""The DRN network (Guo et al., arXiv 1809.07099, Section 4.2) in Flax linen.

    LR (B, H, W, 3) --head conv3x3 3->F--> f_0                       (inside primal block 0)
    primal block i: f_i -> R x ResidualModule -> conv3x3 F->4F -> pixel_shuffle(x2) => f_{i+1}
                    f_{i+1} -> to_rgb conv3x3 F->3                                 => image I_i
    dual block i:   I_i -> conv3x3 stride 2 (3->F) -> ReLU -> conv3x3 F->3         => D_i(I_i)

docs/method.md ("Network") describes the layout, padding, initialisation, shapes, parameter
count and padded batches (``sizes``); the convolutions are `drn_jax.ops.conv3x3`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from drn_jax.ops import (
    CONV_ALGORITHMS,
    check_conv_algorithm,
    conv3x3,
    pixel_shuffle,
    replicate_edges,
    scaled_sizes,
    zero_outside,
)
from drn_jax.scales import MODEL_SCALES, num_levels

__all__ = [
    "CONV_ALGORITHMS",
    "SCALES",
    "DRN",
    "DRNOutputs",
    "DualBlock",
    "PrimalBlock",
    "ResidualModule",
    "count_params",
    "default_kernel_init",
    "expected_param_count",
    "num_levels",
    "pixel_shuffle",
]

SCALES = MODEL_SCALES
"""Upscaling factors DRN supports: one primal block per factor of 2 (`drn_jax.scales`)."""

IMAGE_CHANNELS = 3

Dtype = Any

default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""PyTorch's default conv kernel init, ``U(±1/sqrt(fan_in))``; see the module docstring."""


class _Conv3x3(nn.Module):
    """``pixel_shuffle(conv3x3(x, kernel, stride) + bias, shuffle)``: ``nn.Conv``'s parameters
    (names, shapes, init) and dtype handling around :func:`drn_jax.ops.conv3x3`, which computes
    it by the algorithm ``conv`` names (the Winograd output transform does the pixel shuffle
    when that is used)."""

    features: int
    stride: int = 1
    shuffle: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", default_kernel_init, (3, 3, x.shape[-1], self.features), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv3x3(
            x, kernel, bias, stride=self.stride, shuffle=self.shuffle, algorithm=self.conv
        )


def _conv3x3(
    features: int, name: str, dtype: Dtype, param_dtype: Dtype, conv: str, stride: int = 1,
    shuffle: int = 1,
) -> nn.Module:
    # Padding ((1, 1), (1, 1)) as PyTorch's padding=1; see the module docstring.
    return _Conv3x3(
        features, stride=stride, shuffle=shuffle, dtype=dtype, param_dtype=param_dtype, conv=conv,
        name=name,
    )


class _ConvStack(nn.Module):
    """The fields of a module made of 3×3 convolutions: width, dtypes and algorithm."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv: str = "auto"  # the convolution algorithm, one of CONV_ALGORITHMS (see DRN)


class ResidualModule(_ConvStack):
    """``x + conv3x3(relu(conv3x3(x)))``: EDSR-style, no batch norm, no residual scaling.

    Maps ``(B, H, W, features)`` to the same shape. With ``sizes`` (``(B, 2)`` valid sizes at
    this resolution, see the module docstring) each convolution's output is zeroed outside them.
    """

    @nn.compact
    def __call__(self, x: jax.Array, sizes: jax.Array | None = None) -> jax.Array:
        y = _conv3x3(self.features, "conv_0", self.dtype, self.param_dtype, self.conv)(x)
        y = zero_outside(nn.relu(y), sizes)
        y = _conv3x3(self.features, "conv_1", self.dtype, self.param_dtype, self.conv)(y)
        return x + zero_outside(y, sizes)


class PrimalBlock(nn.Module):
    """One primal block ``P_i``: doubles the resolution of the feature map.

    ``[head conv3x3 3->F] -> num_modules × ResidualModule -> conv3x3 F->4F -> pixel_shuffle(2)``
    gives the next features; ``to_rgb`` (conv3x3 F->3) reads the block's image off them.

    Attributes:
      features: F, the feature width.
      num_modules: R, the residual modules in the block (7 in the paper).
      head: whether this is the first block, which turns the RGB input into F features first.
      conv: the convolution algorithm, one of ``CONV_ALGORITHMS`` (see :class:`DRN`).
    """

    features: int
    num_modules: int
    head: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    conv: str = "auto"

    @nn.compact
    def __call__(
        self, x: jax.Array, with_image: bool = True, sizes: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        """Runs the block.

        Args:
          x: ``(B, H, W, 3)`` image if ``head`` else ``(B, H, W, F)`` features.
          with_image: whether to compute the ``to_rgb`` side output (its parameters are only
            created when it is computed).
          sizes: ``None``, or the int ``(B, 2)`` valid sizes of ``x``'s zero-padded images: the
            outputs are then zero past ``2 · sizes`` (see the module docstring).

        Returns:
          ``(features, image)``: ``(B, 2H, 2W, F)`` features and the ``(B, 2H, 2W, 3)`` image,
          or ``None`` for the image when ``with_image`` is False.
        """
        def conv(f: int, name: str, **kwargs) -> nn.Module:
            return _conv3x3(f, name, self.dtype, self.param_dtype, self.conv, **kwargs)

        if self.head:
            x = zero_outside(conv(self.features, "head")(x), sizes)
        # With remat, each module's activations are recomputed in the backward pass instead of
        # kept: less memory for large patches and batches, at +15% FLOPs for the x4 step.
        module_class = nn.remat(ResidualModule) if self.remat else ResidualModule
        for index in range(self.num_modules):
            x = module_class(
                self.features, self.dtype, self.param_dtype, self.conv, name=f"residual_{index}"
            )(x, sizes)
        # conv3x3 F->4F, then pixel_shuffle(2) (fused into the convolution where it can be).
        fine = scaled_sizes(sizes, 2) if sizes is not None else None
        x = zero_outside(conv(4 * self.features, "upsample", shuffle=2)(x), fine)
        image = zero_outside(conv(IMAGE_CHANNELS, "to_rgb")(x), fine) if with_image else None
        return x, image


class DualBlock(_ConvStack):
    """One dual block ``D_i``: ``conv3x3 stride 2 (3->F) -> ReLU -> conv3x3 F->3``.

    Maps a ``(B, H, W, 3)`` image to ``(B, ceil(H/2), ceil(W/2), 3)`` (exactly half for even
    sizes, which is all DRN feeds it), the learnt counterpart of downsampling.
    """

    @nn.compact
    def __call__(self, image: jax.Array, sizes: jax.Array | None = None) -> jax.Array:
        """``sizes``: ``None``, or the ``(B, 2)`` valid sizes of ``image``'s zero-padded images."""
        coarse = scaled_sizes(sizes, stride=2) if sizes is not None else None
        x = _conv3x3(
            self.features, "down", self.dtype, self.param_dtype, self.conv, stride=2
        )(image)
        x = zero_outside(nn.relu(x), coarse)
        x = _conv3x3(IMAGE_CHANNELS, "to_rgb", self.dtype, self.param_dtype, self.conv)(x)
        return zero_outside(x, coarse)


class DRNOutputs(NamedTuple):
    """What :meth:`DRN.__call__` returns (a pytree).

    Attributes:
      primal: the primal images, coarse to fine; ``primal[-1]`` is the super-resolved image
        ``(B, H·scale, W·scale, 3)``. One entry per level when progressive, else just the final.
      dual: the dual reconstructions, or ``None`` without a dual path. Progressive:
        ``dual[i] = D_i(primal[i])`` at level ``i-1``'s resolution (``dual[0]`` at the LR
        resolution). Non-progressive: one entry, the final image mapped back to the LR size.
    """

    primal: tuple[jax.Array, ...]
    dual: tuple[jax.Array, ...] | None


class DRN(nn.Module):
    """Dual Reconstruction Network.

    Attributes:
      scale: upscaling factor, 2, 4 or 8 (``S = log2(scale)`` primal blocks). Anything else
        raises ``ValueError`` when the module is constructed.
      features: F, the feature width (64, a guess: docs/method.md#guesses; ~1.34M parameters at ×4).
      modules_per_block: R, residual modules per primal block (7, i.e. 14 at ×4, 21 at ×8).
      dual: build the dual blocks and return their outputs from ``__call__`` (training).
      progressive: supervise every level (``primal`` holds S images, one per level, and the
        dual blocks run level by level). With ``False`` — our reading of the paper's Table 4
        "Plain" and "Dual" ablations — only the final image is produced (the intermediate
        ``to_rgb`` convolutions are not created) and, with ``dual=True``, the dual path chains
        all S dual blocks, finest first, to map the final image back to the LR resolution:
        ``dual = (D_0(D_1(...D_{S-1}(final))),)``.
      image_residual: add the bilinearly upsampled image of the level below (the LR input for
        the first level, and for the final image when not progressive) to each level's image, a
        LapSRN-style option (docs/method.md#network); off by default (not in the paper).
      dtype: computation dtype (e.g. ``jnp.bfloat16`` on accelerators); outputs are float32.
      param_dtype: parameter dtype.
      remat: recompute the residual modules' activations in the backward pass (rematerialise)
        instead of storing them: the same values and parameters, less training memory.
      conv: how every convolution is computed, one of ``CONV_ALGORITHMS``: ``"auto"`` (Winograd
        F(4×4, 3×3) and a shifted sum for float32 stride-1 convolutions on CPU, XLA's
        convolution elsewhere), ``"winograd"`` (those wherever dtype, stride and channels allow,
        on any backend), ``"xla"`` (always XLA's convolution) or ``"packed"`` (two pixels packed
        into 128 lanes where the width is even and F ≤ 64). The same parameters and, up to
        float32 rounding, the same values; see :mod:`drn_jax.ops`. Anything else raises
        ``ValueError`` when the module is constructed.

    Initialise with ``model.init(rng, lr)`` (``__call__`` creates every parameter); infer with
    ``model.apply(variables, lr, method="upscale")``.
    """

    scale: int
    features: int = 64
    modules_per_block: int = 7
    dual: bool = True
    progressive: bool = True
    image_residual: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    conv: str = "auto"

    def __post_init__(self) -> None:
        num_levels(self.scale)  # fail at construction, not deep inside init
        check_conv_algorithm(self.conv, "conv")
        super().__post_init__()

    def setup(self) -> None:
        levels = num_levels(self.scale)
        self.primal_blocks = [
            PrimalBlock(
                self.features,
                self.modules_per_block,
                head=(i == 0),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                remat=self.remat,
                conv=self.conv,
            )
            for i in range(levels)
        ]
        if self.dual:
            self.dual_blocks = [
                DualBlock(self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                          conv=self.conv)
                for _ in range(levels)
            ]

    def _check_input(self, lr: jax.Array, sizes: jax.Array | None) -> jax.Array:
        if lr.ndim != 4 or lr.shape[-1] != IMAGE_CHANNELS:
            raise ValueError(
                f"expected an NHWC batch of RGB images (B, H, W, {IMAGE_CHANNELS}); "
                f"got shape {lr.shape}"
            )
        if sizes is not None and jnp.shape(sizes) != (lr.shape[0], 2):
            raise ValueError(f"sizes must have shape ({lr.shape[0]}, 2); got {jnp.shape(sizes)}")
        # The padding must be zero, whatever the caller left there: it stands for the
        # convolutions' own zero padding.
        return zero_outside(lr.astype(self.dtype), sizes)

    def _primal_images(self, lr: jax.Array, all_levels: bool, sizes: jax.Array | None = None
                       ) -> list[jax.Array]:
        """Primal images in compute dtype, coarse to fine; only the final one unless needed."""
        features = lr
        previous = lr  # the image of the level below, for image_residual
        images = []
        last = len(self.primal_blocks) - 1
        # Intermediate images exist only when progressive; they are computed when asked for or
        # when the next level's image residual needs them.
        intermediate = self.progressive and (all_levels or self.image_residual)
        for level, block in enumerate(self.primal_blocks):
            level_sizes = scaled_sizes(sizes, 2 ** level) if sizes is not None else None
            features, image = block(features, with_image=(level == last or intermediate),
                                    sizes=level_sizes)
            if image is None:
                continue
            if self.image_residual:
                # Bilinear interpolation reads one pixel past the border, where an unpadded
                # image has a copy of its edge pixel: give the padded one the same.
                below_sizes = (None if sizes is None else
                               scaled_sizes(sizes, previous.shape[1] // lr.shape[1]))
                upsampled = jax.image.resize(replicate_edges(previous, below_sizes), image.shape,
                                             method="linear")
                fine_sizes = None if sizes is None else scaled_sizes(sizes, image.shape[1] // lr.shape[1])
                image = image + zero_outside(upsampled, fine_sizes)
                previous = image
            images.append(image)
        return images if all_levels else images[-1:]

    def __call__(self, lr: jax.Array, sizes: jax.Array | None = None) -> DRNOutputs:
        """Training forward pass: all primal levels and, if ``dual``, the dual outputs.

        Args:
          lr: ``(B, H, W, 3)`` float LR images in [0, 1]; any ``H``, ``W`` (odd included).
          sizes: ``None`` (training), or the int ``(B, 2)`` valid sizes of zero-padded images:
            every output is then zero outside its image's region and, inside it, equals the
            unpadded image's output (see the module docstring).

        Returns:
          :class:`DRNOutputs` of float32 arrays: ``primal`` level ``i`` (progressive) is
          ``(B, H·2^(i+1), W·2^(i+1), 3)``; ``dual`` level ``i`` is ``(B, H·2^i, W·2^i, 3)``
          (non-progressive: ``primal = (final,)``, ``dual = ((B, H, W, 3),)``).
        """
        x = self._check_input(lr, sizes)
        primal = self._primal_images(x, all_levels=True, sizes=sizes)

        def at(image: jax.Array) -> jax.Array | None:  # the valid sizes at image's resolution
            return None if sizes is None else scaled_sizes(sizes, image.shape[1] // lr.shape[1])

        dual = None
        if self.dual:
            if self.progressive:
                dual = [block(image, at(image)) for block, image in zip(self.dual_blocks, primal)]
            else:
                reconstruction = primal[-1]
                for block in reversed(self.dual_blocks):  # finest first
                    reconstruction = block(reconstruction, at(reconstruction))
                dual = [reconstruction]
            dual = tuple(d.astype(jnp.float32) for d in dual)
        return DRNOutputs(primal=tuple(p.astype(jnp.float32) for p in primal), dual=dual)

    def upscale(self, lr: jax.Array, sizes: jax.Array | None = None) -> jax.Array:
        """Inference: the super-resolved image only, equal to ``__call__(lr, sizes).primal[-1]``.

        Skips the dual blocks and (unless ``image_residual`` needs them) the intermediate
        levels' ``to_rgb`` convolutions.

        Args:
          lr: ``(B, H, W, 3)`` float LR images in [0, 1].
          sizes: ``None``, or the int ``(B, 2)`` valid ``(h, w)`` of each image, stored in the
            top-left corner of its entry (the rest is treated as zero padding). Image ``b``'s
            output is then zero past ``(h·scale, w·scale)`` and, inside, equals the output of
            the unpadded ``(1, h, w, 3)`` image to float rounding.

        Returns:
          float32 ``(B, H·scale, W·scale, 3)``, not clipped.
        """
        x = self._check_input(lr, sizes)
        return self._primal_images(x, all_levels=False, sizes=sizes)[-1].astype(jnp.float32)


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or ``jax.ShapeDtypeStruct``s).

    Pass ``variables["params"]`` (or the whole ``variables``; DRN has no other collection).
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def expected_param_count(
    scale: int,
    features: int = 64,
    modules_per_block: int = 7,
    dual: bool = True,
    progressive: bool = True,
) -> int:
    """Parameter count of ``DRN(scale, features, modules_per_block, dual, progressive)``.

    Derived from the layer sizes (``image_residual`` adds none): a 3×3 conv from ``a`` to ``b``
    channels has ``9·a·b`` weights and ``b`` biases. For the defaults at ×4 this is 1,341,708.
    """
    levels = num_levels(scale)
    f = features

    def conv(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + c_out

    head = conv(IMAGE_CHANNELS, f)  # block 0 only
    residual = modules_per_block * 2 * conv(f, f)  # per block
    upsample = conv(f, 4 * f)  # per block, before the pixel shuffle
    to_rgb = conv(f, IMAGE_CHANNELS)  # per supervised level
    dual_block = conv(IMAGE_CHANNELS, f) + conv(f, IMAGE_CHANNELS)  # per level
    rgb_levels = levels if progressive else 1
    total = head + levels * (residual + upsample) + rgb_levels * to_rgb
    if dual:
        total += levels * dual_block
    return total
