"""The convolution algorithms of drn_jax.ops equal XLA's direct convolution, and the DRN
modules' ``conv`` attribute chooses among them explicitly."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drn_jax import inference, models, ops
from drn_jax.ops import packed


def direct(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


def operands(channels_in, channels_out, height, width, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, height, width, channels_in)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, channels_in, channels_out)) / np.sqrt(9 * channels_in),
                         jnp.float32)
    bias = jnp.asarray(rng.standard_normal((channels_out,)), jnp.float32)
    return x, kernel, bias


@pytest.mark.parametrize("channels_in,channels_out,height,width,path", [
    (32, 32, 9, 13, "winograd"),  # sizes not multiples of the 4-pixel tile
    (16, 64, 8, 8, "winograd"),   # wider output
    (32, 3, 7, 10, "shifted_sum"),  # matrix product + shifted sum (to RGB)
])
def test_conv3x3_value_and_gradients_equal_direct_convolution(channels_in, channels_out, height, width, path):
    x, kernel, _ = operands(channels_in, channels_out, height, width)
    assert ops.conv3x3_path(x, kernel, algorithm="winograd") == path
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal((2, height, width, channels_out)),
                            jnp.float32)

    def pulled(conv):
        value, vjp = jax.vjp(conv, x, kernel)
        return value, vjp(cotangent)

    expected = pulled(direct)
    for algorithm in ("winograd", "xla"):
        actual = jax.jit(lambda: pulled(lambda a, k: ops.conv3x3(a, k, algorithm=algorithm)))()  # noqa: B023
        chex.assert_trees_all_close(actual, expected, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("channels_in,channels_out,shuffle", [(16, 64, 2), (32, 12, 2), (32, 32, 1)])
def test_conv3x3_bias_and_shuffle_equal_across_algorithms(channels_in, channels_out, shuffle):
    """The Winograd output transform's fused bias and pixel shuffle, values and all gradients."""
    x, kernel, bias = operands(channels_in, channels_out, 6, 9)

    def loss(algorithm):
        def f(a, k, b):
            y = ops.conv3x3(a, k, b, shuffle=shuffle, algorithm=algorithm)
            return jnp.sum(jnp.sin(y)), y
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(x, kernel, bias)

    winograd, xla = loss("winograd"), loss("xla")
    assert xla[0][1].shape == (2, 6 * shuffle, 9 * shuffle, channels_out // shuffle**2)
    chex.assert_trees_all_close(winograd, xla, atol=2e-4, rtol=2e-4)


def test_conv3x3_paths():
    x, kernel, _ = operands(32, 32, 4, 4)
    cpu = jax.default_backend() == "cpu"
    assert ops.conv3x3_path(x, kernel, algorithm="auto") == ("winograd" if cpu else "xla")
    assert ops.conv3x3_path(x, kernel, algorithm="auto", platform="cpu") == "winograd"
    assert ops.conv3x3_path(x, kernel, algorithm="auto", platform="tpu") == "xla"
    assert ops.conv3x3_path(x, kernel, algorithm="winograd") == "winograd"
    assert ops.conv3x3_path(x, kernel, algorithm="xla") == "xla"
    # Strided, non-float32 and few input channels use XLA's convolution whatever is asked.
    assert ops.conv3x3_path(x, kernel, stride=2, algorithm="winograd") == "xla"
    assert ops.conv3x3_path(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), algorithm="winograd") == "xla"
    assert ops.conv3x3_path(x[..., :3], kernel[:, :, :3], algorithm="winograd") == "xla"


def test_packed_kernel_by_hand():
    """One channel in and out, kernel row ``[1, 2, 3]``: packed column ``a``, input parity ``p``
    and output parity ``q`` hold original column ``2(a - 1) + p - q + 1`` (0 outside 0..2)."""
    kernel = jnp.asarray([[1.0, 2.0, 3.0]] * 3).reshape(3, 3, 1, 1)
    two = np.asarray(packed.packed_kernel(kernel))
    assert two.shape == (3, 3, 2, 2)
    # two[h, a] is the (p, q) matrix.
    np.testing.assert_array_equal(two[0, 0], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(two[0, 1], [[2, 1], [3, 2]])
    np.testing.assert_array_equal(two[0, 2], [[0, 3], [0, 0]])
    np.testing.assert_array_equal(two[2], two[0])


@pytest.mark.parametrize("channels_in,channels_out,height,width,dtype", [
    (64, 64, 5, 8, jnp.float32),   # the trunk's shape: two pixels fill 128 lanes
    (16, 48, 4, 10, jnp.float32),
    (64, 64, 6, 6, jnp.bfloat16),  # the accelerator step's dtype
])
def test_packed_conv_value_and_gradients_equal_direct_convolution(channels_in, channels_out, height, width,
                                                                  dtype):
    x, kernel, bias = operands(channels_in, channels_out, height, width, seed=3)
    x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
    assert ops.conv3x3_path(x, kernel, algorithm="packed") == "packed"
    cotangent = jnp.asarray(np.random.default_rng(4).standard_normal((2, height, width, channels_out)), dtype)

    def pulled(conv):
        value, vjp = jax.vjp(conv, x, kernel, bias)
        return value, vjp(cotangent)

    expected = pulled(lambda a, k, b: direct(a, k) + b)
    actual = jax.jit(lambda: pulled(lambda a, k, b: ops.conv3x3(a, k, b, algorithm="packed")))()
    tolerance = 2e-4 if dtype == jnp.float32 else 0.1  # bfloat16: 8 bits of mantissa, sums of 576 products
    chex.assert_trees_all_close(jax.tree.map(lambda t: t.astype(jnp.float32), actual),
                                jax.tree.map(lambda t: t.astype(jnp.float32), expected),
                                atol=tolerance, rtol=tolerance)


def test_packed_applies_to_stride_one_even_widths_of_at_most_64_channels():
    x, kernel, _ = operands(64, 64, 4, 6)
    assert ops.conv3x3_path(x, kernel, algorithm="packed") == "packed"
    assert ops.conv3x3_path(x[:, :, :5], kernel, algorithm="packed") == "xla"  # odd width
    assert ops.conv3x3_path(x, kernel, stride=2, algorithm="packed") == "xla"
    wide = jnp.zeros((3, 3, 64, 128))
    assert ops.conv3x3_path(x, wide, algorithm="packed") == "xla"  # 2 x 128 output lanes: no gain
    odd = operands(64, 64, 4, 5)
    np.testing.assert_allclose(ops.conv3x3(odd[0], odd[1], algorithm="packed"), direct(odd[0], odd[1]),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="even width; got 5"):
        packed.packed_conv3x3(odd[0], odd[1])


def test_conv3x3_rejects_an_unknown_algorithm():
    x, kernel, _ = operands(16, 16, 4, 4)
    with pytest.raises(ValueError, match="'auto', 'winograd', 'xla'"):
        ops.conv3x3(x, kernel, algorithm="direct")


def pytorch_conv_stride2(x, kernel, bias):
    """``torch.nn.Conv2d(stride=2, padding=1)`` written out: one zero pixel on every side, output
    pixel ``(i, j)`` the 3×3 window whose top-left is padded pixel ``(2i, 2j)``; float64 loops."""
    x, kernel, bias = (np.asarray(a, np.float64) for a in (x, kernel, bias))
    batch, height, width, _ = x.shape
    padded = np.zeros((batch, height + 2, width + 2, x.shape[-1]))
    padded[:, 1:-1, 1:-1] = x
    out_h, out_w = (height + 2 - 3) // 2 + 1, (width + 2 - 3) // 2 + 1
    out = np.zeros((batch, out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            for dy in range(3):
                for dx in range(3):
                    out[:, i, j] += padded[:, 2 * i + dy, 2 * j + dx] @ kernel[dy, dx]
    return out + bias


def test_conv3x3_stride2_pads_like_pytorch():
    # Width 8 is even: "SAME" padding would pad (0, 1) there and shift every output column.
    x, kernel, bias = operands(3, 16, 7, 8)
    expected = pytorch_conv_stride2(x, kernel, bias)
    assert expected.shape == (2, 4, 4, 16)
    for algorithm in ("auto", "winograd", "xla"):
        y = ops.conv3x3(x, kernel, bias, stride=2, algorithm=algorithm)
        assert y.shape == (2, 4, 4, 16)
        np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5, err_msg=algorithm)


def test_drn_outputs_do_not_depend_on_the_algorithm():
    lr = jax.random.uniform(jax.random.key(1), (1, 10, 12, 3))
    variables = models.DRN(4, features=16, modules_per_block=1).init(jax.random.key(0), lr)
    results = {}
    for algorithm in ("xla", "winograd", "packed"):
        model = models.DRN(4, features=16, modules_per_block=1, conv=algorithm)
        loss = lambda params: jnp.mean(model.apply({"params": params}, lr).primal[-1] ** 2)  # noqa: B023
        results[algorithm] = jax.jit(jax.value_and_grad(loss))(variables["params"])
    chex.assert_trees_all_close(results["winograd"], results["xla"], atol=1e-5, rtol=1e-3)
    chex.assert_trees_all_close(results["packed"], results["xla"], atol=1e-5, rtol=1e-3)


def test_conv_attribute_is_validated_and_visible():
    assert models.CONV_ALGORITHMS == ops.CONV_ALGORITHMS == ("auto", "winograd", "xla", "packed")
    with pytest.raises(ValueError, match="conv must be one of 'auto', 'winograd', 'xla', 'packed'; got 'bogus'"):
        models.DRN(4, conv="bogus")
    assert models.DRN(4).conv == "auto"
    model = models.DRN(4, conv="xla")
    assert model.conv == "xla"
    assert "conv = 'xla'" in repr(model)
    assert model.clone(conv="winograd").conv == "winograd"


def test_conv_attribute_reaches_every_convolution():
    """Every ``_Conv3x3`` in the bound module tree carries the DRN's choice."""
    lr = jnp.zeros((1, 4, 4, 3))
    model = models.DRN(2, features=16, modules_per_block=1, conv="xla")
    seen = []

    def interceptor(next_fun, args, kwargs, context):
        if type(context.module).__name__ == "_Conv3x3":
            seen.append((context.module.name, context.module.conv))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(model.init, jax.random.key(0), lr)
    names = {name for name, _ in seen}
    assert {"head", "conv_0", "conv_1", "upsample", "to_rgb", "down"} <= names
    assert {conv for _, conv in seen} == {"xla"}


def test_parameters_do_not_depend_on_the_algorithm():
    lr = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    trees = [jax.eval_shape(models.DRN(4, features=16, modules_per_block=1, conv=conv).init,
                            jax.random.key(0), lr) for conv in models.CONV_ALGORITHMS]
    for tree in trees[1:]:
        chex.assert_trees_all_equal_shapes_and_dtypes(tree, trees[0])
    # So abstract_params may trace any model with XLA's convolution, the quickest to trace.
    from drn_jax import model_factory

    winograd = models.DRN(4, features=16, modules_per_block=1, conv="winograd")
    chex.assert_trees_all_equal_shapes_and_dtypes(model_factory.abstract_params(winograd), trees[0]["params"])


def test_auto_resolves_by_platform_width_and_purpose():
    resolve = ops.resolve_conv_algorithm
    for platform in ("tpu", "gpu", "cuda", "rocm"):
        for features, training in ((32, False), (64, False), (32, True), (64, True)):
            assert resolve("auto", platform=platform, features=features, training=training) == "xla"
    # On a CPU: Winograd for training; for inference only from CPU_INFERENCE_WINOGRAD_MIN_FEATURES on.
    assert ops.CPU_INFERENCE_WINOGRAD_MIN_FEATURES == 64
    assert resolve("auto", platform="cpu", features=64, training=True) == "winograd"
    assert resolve("auto", platform="cpu", features=32, training=True) == "winograd"
    assert resolve("auto", platform="cpu", features=64, training=False) == "winograd"
    assert resolve("auto", platform="cpu", features=32, training=False) == "xla"
    for algorithm in ("winograd", "xla", "packed"):  # explicit choices are kept
        assert resolve(algorithm, platform="tpu", features=64, training=True) == algorithm
        assert resolve(algorithm, platform="cpu", features=32, training=False) == algorithm
    with pytest.raises(ValueError, match="'auto', 'winograd', 'xla'"):
        resolve("direct", platform="cpu", features=64, training=True)


def lowered_ops(model, platform):
    """(XLA convolutions, matrix products) in the StableHLO of ``model.upscale`` lowered for
    `platform` from this (CPU) host: the Winograd path is matrix products, XLA's is convolutions."""
    lr = jax.ShapeDtypeStruct((1, 12, 12, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), lr)
    text = jax.jit(lambda v, x: model.apply(v, x, method="upscale")).trace(variables, lr).lower(
        lowering_platforms=(platform,)).as_text()
    return text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")


def test_compiling_for_a_tpu_from_a_cpu_host_gives_xla_convolutions():
    """Issue 26: "auto" decides by the platform a program is compiled for, not by the default backend."""
    from drn_jax import config as config_lib
    from drn_jax import model_factory

    assert jax.default_backend() == "cpu"
    config = config_lib.base_config()
    config.scale, config.model.features, config.model.modules_per_block = 4, 16, 1
    assert config.model.conv == "auto"
    for training in (True, False):
        assert model_factory.create_model(config, platform="tpu", training=training).conv == "xla"
    assert model_factory.create_model(config, training=True).conv == "winograd"  # this CPU host
    # 1 head + 2 levels × (2 residual + 1 upsample) + 1 to_rgb = 8 convolutions in upscale.
    built = model_factory.create_model(config, platform="tpu", training=False)
    assert lowered_ops(built, "tpu") == (8, 0)
    # An unresolved "auto" module decides when lowered: XLA's convolutions for the TPU, and on
    # the CPU only the head (from RGB) stays one, the rest are Winograd's matrix products.
    raw = models.DRN(4, features=16, modules_per_block=1)
    assert raw.conv == "auto"
    assert lowered_ops(raw, "tpu") == (8, 0)
    convolutions, products = lowered_ops(raw, "cpu")
    assert convolutions == 1 and products >= 7
    # The inference runner resolves "auto" for its devices' platform (here a CPU: F 16 < 64).
    assert inference.ModelRunner(raw).model.conv == "xla"
    assert inference.ModelRunner(raw.clone(features=64)).model.conv == "winograd"
    assert inference.ModelRunner(raw.clone(conv="winograd")).model.conv == "winograd"
