"""DRN's arithmetic counted from its layer sizes, as :func:`drn_jax.models.expected_param_count`
counts its parameters.

Nearly all of DRN's work is 3×3 convolutions (docs/method.md#network). A 3×3 convolution from
``a`` to ``b`` channels producing ``p`` output pixels is ``9·a·b·p`` multiply-adds, 2 FLOPs each.
Bias additions, ReLUs, pixel shuffles, masks, the bicubic pyramid, the loss and the optimiser
are left out: they are elementwise or tiny matrix products, well under 1% of the convolutions
at the paper's sizes, so a compiler's count of a whole program should come out slightly above
these figures (the ratio is the check).

Training (:func:`expected_flops` with ``training=True``) is the forward pass plus, for every
convolution, the gradient of its kernel and of its input, each a convolution of the forward's
size, so 3× the forward, except that the head convolution's input (the LR image) needs no
gradient. ``remat`` recomputes the residual modules' forward pass in the backward pass.

:func:`expected_activation_bytes` is the memory traffic of the same convolutions run one after
another, each reading its input and writing its output once (elementwise work fused into them,
parameters left out): a floor for any schedule that keeps no feature map on the chip from one
convolution to the next, against which a compiler's byte count can be read.
"""

from __future__ import annotations

import dataclasses

from drn_jax.scales import num_levels

__all__ = ["ConvLayer", "conv_layers", "expected_activation_bytes", "expected_flops", "expected_macs"]

IMAGE_CHANNELS = 3  # as drn_jax.models.IMAGE_CHANNELS (models imports Flax; this module does not)


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One 3×3 convolution of a DRN applied to one image.

    Attributes:
      name: where it is, e.g. ``"primal_1/residual_3/conv_0"``, ``"dual_0/down"``.
      kind: ``"head"``, ``"residual"``, ``"upsample"``, ``"to_rgb"`` or ``"dual"``.
      channels_in, channels_out: the kernel's ``C`` and ``K`` (before any pixel shuffle).
      pixels: output pixels of the convolution (before the pixel shuffle; after the stride).
    """

    name: str
    kind: str
    channels_in: int
    channels_out: int
    pixels: int

    @property
    def input_pixels(self) -> int:
        """Input pixels: ``pixels``, or 4× for the dual blocks' stride-2 ``down`` convolution."""
        return 4 * self.pixels if self.name.endswith("/down") else self.pixels

    @property
    def macs(self) -> int:
        """Multiply-adds for one image: ``9 · C · K · pixels``."""
        return 9 * self.channels_in * self.channels_out * self.pixels


def conv_layers(scale: int, lr_size: int | tuple[int, int], features: int = 64, modules_per_block: int = 7,
                dual: bool = True, progressive: bool = True, *, upscale_only: bool = False
                ) -> list[ConvLayer]:
    """Every 3×3 convolution that ``DRN(scale, features, modules_per_block, dual, progressive)``
    runs on one LR image of ``lr_size`` (a side, or ``(H, W)``), in order.

    ``upscale_only``: the convolutions of :meth:`drn_jax.models.DRN.upscale` (no dual blocks, the
    last level's ``to_rgb`` only; ``image_residual`` is taken as off), else those of
    ``DRN.__call__`` (training). Even sizes are assumed wherever a stride-2 convolution runs,
    which is all DRN feeds it.
    """
    height, width = (lr_size, lr_size) if isinstance(lr_size, int) else lr_size
    levels = num_levels(scale)
    f = features
    layers = [ConvLayer("primal_0/head", "head", IMAGE_CHANNELS, f, height * width)]
    with_image = [level == levels - 1 or (progressive and not upscale_only) for level in range(levels)]
    for level in range(levels):
        pixels = (height << level) * (width << level)
        for module in range(modules_per_block):
            for conv in range(2):
                layers.append(ConvLayer(f"primal_{level}/residual_{module}/conv_{conv}", "residual", f, f, pixels))
        layers.append(ConvLayer(f"primal_{level}/upsample", "upsample", f, 4 * f, pixels))
        if with_image[level]:
            layers.append(ConvLayer(f"primal_{level}/to_rgb", "to_rgb", f, IMAGE_CHANNELS, 4 * pixels))
    if dual and not upscale_only:
        # Progressive: dual block i maps level i's image (2^(i+1)·LR) down to 2^i·LR. Otherwise the
        # final image goes down through every dual block, finest first: the same sizes.
        for level in range(levels):
            pixels = (height << level) * (width << level)
            layers.append(ConvLayer(f"dual_{level}/down", "dual", IMAGE_CHANNELS, f, pixels))
            layers.append(ConvLayer(f"dual_{level}/to_rgb", "dual", f, IMAGE_CHANNELS, pixels))
    return layers


def expected_macs(layers: list[ConvLayer], *, training: bool = False, remat: bool = False) -> int:
    """Multiply-adds of ``layers`` for one image: the forward pass, or with ``training`` the
    forward and backward passes (see the module docstring; ``remat`` adds the residual
    modules' forward again)."""
    forward = sum(layer.macs for layer in layers)
    if not training:
        return forward
    head_input_gradient = sum(layer.macs for layer in layers if layer.kind == "head")
    total = 3 * forward - head_input_gradient
    if remat:
        total += sum(layer.macs for layer in layers if layer.kind == "residual")
    return total


def expected_flops(scale: int, lr_size: int | tuple[int, int], batch: int = 1, features: int = 64,
                   modules_per_block: int = 7, dual: bool = True, progressive: bool = True, *,
                   training: bool = False, remat: bool = False, upscale_only: bool = False) -> int:
    """FLOPs (2 per multiply-add) of DRN's convolutions on ``batch`` LR images of ``lr_size``.

    ``training``: one training step's forward and backward passes over the batch (the
    optimiser and loss are not counted); else the forward pass, of ``DRN.__call__`` or, with
    ``upscale_only``, of ``DRN.upscale``. For the paper's x4 model at LR 24 (HR 96) that is
    1,941,884,928 multiply-adds per image forward, 186.4 GFLOP per training step of 16
    (XLA counts about 3% less: its count skips the taps that fall on the zero padding).
    """
    layers = conv_layers(scale, lr_size, features, modules_per_block, dual, progressive,
                         upscale_only=upscale_only)
    return 2 * batch * expected_macs(layers, training=training, remat=remat)


def expected_activation_bytes(layers: list[ConvLayer], *, training: bool = False, remat: bool = False,
                              bytes_per_value: int = 2) -> int:
    """Bytes of feature maps that ``layers`` read and write for one image, each convolution
    reading its input once and writing its output once (the floor described in the module
    docstring; ``bytes_per_value`` 2 for bfloat16).

    Forward, per convolution: its input and its output. With ``training``, the backward pass
    also reads the output's gradient, reads the input again (for the kernel's gradient) and
    writes the input's gradient (not for the head, whose input is the image); ``remat`` reads
    and writes the residual modules' forward maps once more.
    """
    def forward(layer: ConvLayer) -> int:
        return layer.channels_in * layer.input_pixels + layer.channels_out * layer.pixels

    values = sum(forward(layer) for layer in layers)
    if training:
        for layer in layers:
            gradient_in = 0 if layer.kind == "head" else layer.channels_in * layer.input_pixels
            values += layer.channels_out * layer.pixels + layer.channels_in * layer.input_pixels + gradient_in
        if remat:
            values += sum(forward(layer) for layer in layers if layer.kind == "residual")
    return bytes_per_value * values
