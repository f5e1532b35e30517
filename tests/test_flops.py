"""drn_jax.flops: DRN's convolution counts against a hand count and against the model's kernels."""

import collections

import jax
import pytest

from drn_jax import flops, model_factory
from drn_jax.config import base_config


def test_paper_x4_forward_by_hand():
    # x4, F 64, R 7, LR 24 (HR 96). Written out level by level: 9·C·K multiply-adds per output pixel.
    lr, hr_mid, hr = 24 * 24, 48 * 48, 96 * 96
    level_0 = 9 * 3 * 64 * lr + 14 * 9 * 64 * 64 * lr + 9 * 64 * 256 * lr + 9 * 64 * 3 * hr_mid
    level_1 = 14 * 9 * 64 * 64 * hr_mid + 9 * 64 * 256 * hr_mid + 9 * 64 * 3 * hr
    # Dual block 0: the 48² image down to 24² (stride 2, 3 -> 64) and 64 -> 3 there; block 1 at 48².
    duals = 2 * 9 * 3 * 64 * lr + 2 * 9 * 3 * 64 * hr_mid
    forward = level_0 + level_1 + duals
    assert forward == 1_941_884_928
    layers = flops.conv_layers(4, 24)
    assert flops.expected_macs(layers) == forward
    head = 9 * 3 * 64 * lr
    assert flops.expected_macs(layers, training=True) == 3 * forward - head
    remat = 14 * 9 * 64 * 64 * (lr + hr_mid)  # per level, 7 modules of 2 convolutions
    assert flops.expected_macs(layers, training=True, remat=True) == 3 * forward - head + remat
    assert flops.expected_flops(4, 24, 16, training=True) == 2 * 16 * (3 * forward - head)


def test_activation_bytes_by_hand():
    # x2 (one level), F 4, R 1, LR 2×2 (4 pixels): values read + written per convolution, forward:
    # head 3·4 + 4·4, two residual 4·4 + 4·4, upsample 4·4 + 16·4, to_rgb 4·16 + 3·16 (at 4×4),
    # dual down 3·16 + 4·4 (stride 2 from the 4×4 image), dual to_rgb 4·4 + 3·4.
    forward = (12 + 16) + 2 * (16 + 16) + (16 + 64) + (64 + 48) + (48 + 16) + (16 + 12)
    assert forward == 376
    # Backward: the output's gradient, the input again and the input's gradient (none for the head).
    backward = (16 + 12) + 2 * (16 + 16 + 16) + (64 + 16 + 16) + (48 + 64 + 64) + (16 + 48 + 48) + (12 + 16 + 16)
    assert backward == 552
    layers = flops.conv_layers(2, 2, features=4, modules_per_block=1)
    assert flops.expected_activation_bytes(layers) == 2 * forward
    assert flops.expected_activation_bytes(layers, training=True) == 2 * (forward + backward)
    assert flops.expected_activation_bytes(layers, training=True, remat=True) == 2 * (forward + backward + 64)
    assert flops.expected_activation_bytes(layers, bytes_per_value=4) == 4 * forward


def test_upscale_skips_dual_blocks_and_intermediate_images():
    # x2 F 4 R 1 on a 5×3 image: head, 2 residual convs, upsample, to_rgb at 10×6.
    macs = 9 * 3 * 4 * 15 + 2 * 9 * 4 * 4 * 15 + 9 * 4 * 16 * 15 + 9 * 4 * 3 * 60
    layers = flops.conv_layers(2, (5, 3), features=4, modules_per_block=1, upscale_only=True)
    assert flops.expected_macs(layers) == macs
    x8 = flops.conv_layers(8, 4, features=4, modules_per_block=1, upscale_only=True)
    assert [layer.kind for layer in x8].count("to_rgb") == 1
    assert flops.expected_flops(2, (5, 3), 3, features=4, modules_per_block=1, upscale_only=True) == 2 * 3 * macs


@pytest.mark.parametrize("scale,progressive,dual", [(2, True, True), (4, True, True), (8, True, True),
                                                    (4, False, True), (8, False, False)])
def test_layers_are_the_models_kernels(scale, progressive, dual):
    # Every kernel DRN.__call__ creates is one listed convolution, with its channels.
    config = base_config()
    config.scale = scale
    config.model.update(features=8, modules_per_block=2, progressive=progressive, dual=dual)
    params = model_factory.abstract_params(model_factory.create_model(config))
    kernels = collections.Counter(
        (leaf.shape[2], leaf.shape[3]) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key == "kernel")
    layers = flops.conv_layers(scale, 8, features=8, modules_per_block=2, progressive=progressive, dual=dual)
    assert collections.Counter((layer.channels_in, layer.channels_out) for layer in layers) == kernels
