"""The whole DRN forward pass against an independent float64 NumPy reference written here.

The reference reads the Flax parameter tree and implements every layer from the paper's layout
(drn_jax/models.py module docstring) with nothing from drn_jax: 3×3 convolutions as sums over
the 9 taps of a zero-padded input (stride 2 with PyTorch's ``padding=1``), ReLU, PyTorch's
pixel-shuffle channel order, residual modules, the head, upsampling, ``to_rgb`` per level and
the dual blocks (level by level, or chained for the non-progressive model).

Cases cover F = 16 (on CPU the 16→16 and 16→64 convolutions run as Winograd F(4×4, 3×3) and
16→3 as a matrix product plus shifted sum) and F = 8 (XLA's convolution throughout), scales
2, 4 and 8, odd LR sizes, progressive or not, dual on or off. A last test shows the comparison
is sensitive: plausible mistakes in the reference (a dropped skip, a misplaced ReLU, the other
pixel-shuffle order, XLA "SAME" padding for the stride-2 convolution) miss by far more than the
tolerance.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drn_jax import models

RTOL_TO_SCALE = 1e-5  # |flax - reference| <= 1e-5 · max|reference| (float32 against float64)


# ----------------------------------------------------------------------------------------------
# The reference (float64 NumPy)
# ----------------------------------------------------------------------------------------------


def ref_conv3x3(x: np.ndarray, conv: dict, stride: int = 1, same_pad: bool = False) -> np.ndarray:
    """``out[y, x] = bias + Σ_ij xp[s·y + i, s·x + j] @ W[i, j]`` with ``xp`` zero-padded by one
    pixel per side (PyTorch ``padding=1``): ``ceil(H/s)`` rows, output row ``y`` centred on input
    row ``s·y``. ``same_pad`` (a wrong variant for stride 2) pads like XLA's "SAME" instead:
    ``(0, 1)`` for even sizes, shifting the sampling grid by one pixel."""
    kernel = np.asarray(conv["kernel"], np.float64)
    bias = np.asarray(conv["bias"], np.float64)
    n, h, w, _ = x.shape
    ho, wo = -(-h // stride), -(-w // stride)

    def pads(size, out):
        if not same_pad:
            return (1, 1)
        total = max((out - 1) * stride + 3 - size, 0)
        return (total // 2, total - total // 2)

    xp = np.pad(x, ((0, 0), pads(h, ho), pads(w, wo), (0, 0)))
    out = np.broadcast_to(bias, (n, ho, wo, kernel.shape[-1])).copy()
    for i in range(3):
        for j in range(3):
            patch = xp[:, i: i + stride * (ho - 1) + 1: stride, j: j + stride * (wo - 1) + 1: stride, :]
            out += np.einsum("nhwc,ck->nhwk", patch, kernel[i, j])
    return out


def ref_pixel_shuffle(x: np.ndarray, r: int = 2, tf_order: bool = False) -> np.ndarray:
    """PyTorch order: ``out[h·r + i, w·r + j, c] = x[h, w, c·r² + i·r + j]``.
    ``tf_order`` (a wrong variant) is depth_to_space's ``x[h, w, (i·r + j)·C + c]``."""
    n, h, w, d = x.shape
    c = d // (r * r)
    out = np.zeros((n, h * r, w * r, c), x.dtype)
    for i in range(r):
        for j in range(r):
            if tf_order:
                out[:, i::r, j::r, :] = x[..., (i * r + j) * c: (i * r + j + 1) * c]
            else:
                out[:, i::r, j::r, :] = x[..., i * r + j:: r * r]
    return out


def relu(x):
    return np.maximum(x, 0.0)


def ref_residual(x, p, variant):
    if variant == "relu_after_second_conv":
        return x + relu(ref_conv3x3(ref_conv3x3(x, p["conv_0"]), p["conv_1"]))
    y = ref_conv3x3(relu(ref_conv3x3(x, p["conv_0"])), p["conv_1"])
    return y if variant == "no_skip" else x + y


def ref_dual_block(image, p, variant):
    x = relu(ref_conv3x3(image, p["down"], stride=2, same_pad=(variant == "same_pad_stride2")))
    return ref_conv3x3(x, p["to_rgb"])


def ref_drn(params, lr, *, scale, modules_per_block, progressive, dual, variant=None):
    """(primal images, dual images or None), coarse to fine, float64."""
    levels = int(round(math.log2(scale)))
    x = np.asarray(lr, np.float64)
    features = None
    primal = []
    for level in range(levels):
        block = params[f"primal_blocks_{level}"]
        features = ref_conv3x3(x, block["head"]) if level == 0 else features
        for index in range(modules_per_block):
            features = ref_residual(features, block[f"residual_{index}"], variant)
        features = ref_pixel_shuffle(ref_conv3x3(features, block["upsample"]), 2,
                                     tf_order=(variant == "tf_pixel_shuffle"))
        if progressive or level == levels - 1:
            primal.append(ref_conv3x3(features, block["to_rgb"]))
    if not dual:
        return primal, None
    if progressive:
        duals = [ref_dual_block(image, params[f"dual_blocks_{level}"], variant)
                 for level, image in enumerate(primal)]
    else:
        image = primal[-1]
        for level in reversed(range(levels)):  # finest first
            image = ref_dual_block(image, params[f"dual_blocks_{level}"], variant)
        duals = [image]
    return primal, duals


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def random_variables(model: models.DRN, seed: int):
    """Random float32 variables drawn in NumPy (as tests/helpers.py's tiny_model): PyTorch's kernel bound,
    non-zero biases so that zero padding and the ReLUs matter."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if len(leaf.shape) == 4:
            bound = 1.0 / np.sqrt(np.prod(leaf.shape[:3]))
            return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree.map(draw, shapes)


def flax_outputs(model, variables, lr):
    outputs = jax.jit(model.apply)(variables, jnp.asarray(lr))
    primal = [np.asarray(p, np.float64) for p in outputs.primal]
    dual = None if outputs.dual is None else [np.asarray(d, np.float64) for d in outputs.dual]
    return primal, dual


def max_scaled_error(actual: list, expected: list) -> float:
    """max over levels of max|actual - expected| / max|expected|."""
    assert len(actual) == len(expected)
    errors = []
    for a, e in zip(actual, expected):
        assert a.shape == e.shape, (a.shape, e.shape)
        errors.append(np.max(np.abs(a - e)) / np.max(np.abs(e)))
    return max(errors)


@pytest.fixture(autouse=True)
def _default_conv_algorithm(monkeypatch):
    # Today's models.py reads DRN_JAX_CONV at trace time; make sure nobody's shell forces
    # "direct", so that the F = 16 cases really go through the CPU Winograd path.
    monkeypatch.delenv("DRN_JAX_CONV", raising=False)


# (scale, F, R, LR height, LR width, progressive, dual)
CASES = [
    (2, 16, 2, 7, 9, True, True),     # Winograd residual/upsample convs, odd LR size
    (4, 8, 1, 7, 9, True, True),      # XLA convolutions throughout, odd LR size
    (4, 16, 1, 5, 6, False, True),    # non-progressive: the dual blocks chained back to LR
    (4, 16, 1, 8, 8, True, False),    # no dual path
    (2, 8, 1, 9, 7, False, False),    # plain
    (8, 16, 1, 3, 5, True, True),     # x8 at a tiny size: 3 levels
    (8, 8, 1, 3, 3, False, True),     # x8 non-progressive: 3 chained dual blocks
]


@pytest.mark.parametrize("scale,features,modules,height,width,progressive,dual", CASES)
def test_forward_matches_float64_reference(scale, features, modules, height, width, progressive, dual):
    model = models.DRN(scale, features=features, modules_per_block=modules, dual=dual,
                       progressive=progressive)
    variables = random_variables(model, seed=scale * 100 + features + height)
    lr = np.random.default_rng(height * width).uniform(0.0, 1.0, (2, height, width, 3)).astype(np.float32)

    primal, duals = flax_outputs(model, variables, lr)
    ref_primal, ref_dual = ref_drn(variables["params"], lr, scale=scale, modules_per_block=modules,
                                   progressive=progressive, dual=dual)

    levels = int(math.log2(scale))
    expected_sizes = [(height * 2 ** (i + 1), width * 2 ** (i + 1)) for i in range(levels)]
    assert [p.shape[1:3] for p in primal] == (expected_sizes if progressive else expected_sizes[-1:])
    error = max_scaled_error(primal, ref_primal)
    assert error < RTOL_TO_SCALE, f"primal: max error {error:.2e} of the output scale"
    if not dual:
        assert duals is None
        return
    dual_sizes = [(height * 2 ** i, width * 2 ** i) for i in range(levels)]
    assert [d.shape[1:3] for d in duals] == (dual_sizes if progressive else [(height, width)])
    error = max_scaled_error(duals, ref_dual)
    assert error < RTOL_TO_SCALE, f"dual: max error {error:.2e} of the output scale"


VARIANTS = [  # (a wrong reference, the output it changes)
    ("no_skip", "primal"),
    ("relu_after_second_conv", "primal"),
    ("tf_pixel_shuffle", "primal"),
    ("same_pad_stride2", "dual"),
]


@pytest.mark.parametrize("features", [16, 8])
def test_wrong_reference_variants_miss_by_far_more_than_the_tolerance(features):
    """The tolerance above is tight enough to catch each of these mistakes (a 100× margin)."""
    scale, modules = 4, 1
    model = models.DRN(scale, features=features, modules_per_block=modules)
    variables = random_variables(model, seed=7)
    lr = np.random.default_rng(3).uniform(0.0, 1.0, (2, 6, 8, 3)).astype(np.float32)
    primal, duals = flax_outputs(model, variables, lr)
    outputs = {"primal": primal, "dual": duals}

    def reference(variant):
        return dict(zip(("primal", "dual"), ref_drn(variables["params"], lr, scale=scale,
                                                    modules_per_block=modules, progressive=True,
                                                    dual=True, variant=variant)))

    right = reference(None)
    assert max_scaled_error(outputs["primal"], right["primal"]) < RTOL_TO_SCALE
    assert max_scaled_error(outputs["dual"], right["dual"]) < RTOL_TO_SCALE
    missed = {}
    for variant, part in VARIANTS:
        # The finest level sees every one of these mistakes.
        missed[variant] = max_scaled_error(outputs[part][-1:], reference(variant)[part][-1:])
    too_close = {v: f"{e:.2e}" for v, e in missed.items() if not e > 100 * RTOL_TO_SCALE}
    assert not too_close, f"wrong references that still match the model: {too_close}"
