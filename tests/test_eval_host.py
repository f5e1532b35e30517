"""Evaluation compiles only the network: LR images and scores are made in NumPy on the host."""

import jax
import numpy as np

from drn_jax import evaluation, inference, metrics, resize
from helpers import tiny_model

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: _compiles.append(event) if event == COMPILE_EVENT else None)


def noisy_pair(shape, seed):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape, dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-25, 26, shape), 0, 255).astype(np.uint8)
    return sr, hr


def test_host_scores_equal_the_jitted_ones():
    for shape, seed in [((40, 37, 3), 0), ((33, 50, 1), 1)]:
        sr, hr = noisy_pair(shape, seed)
        jitted = {name: float(value) for name, value in metrics.score_y(sr, hr, 4).items()}
        host = metrics.score_y_host(sr, hr, 4)
        assert host.keys() == jitted.keys()
        for name in host:
            np.testing.assert_allclose(host[name], jitted[name], rtol=2e-6)
    rgb = noisy_pair((5, 6, 3), 2)[0]
    np.testing.assert_allclose(metrics.rgb_to_y_host(rgb, 255.0), metrics.rgb_to_y(rgb, 255.0), rtol=1e-6)
    # Hand-computed: a 255-level difference of 1 everywhere is 10 log10(255²) dB.
    hr = np.full((20, 20, 1), 100, np.uint8)
    assert abs(metrics.score_y_host(hr + 1, hr, 2)["psnr"] - 10 * np.log10(255.0**2)) < 1e-9


def test_host_bicubic_equals_the_jitted_one():
    image = np.random.default_rng(3).integers(0, 256, (27, 31, 3), dtype=np.uint8)
    for scale in (1 / 4, 1 / 3, 2, 4):
        np.testing.assert_array_equal(resize.imresize_host(image, scale), np.asarray(resize.imresize(image, scale)))
        floats = image / np.float32(255)
        np.testing.assert_allclose(resize.imresize_host(floats, scale), resize.imresize(floats, scale), atol=3e-7)
    out = resize.imresize_host(image.astype(np.float32), output_size=(10, 9), quantize=False)
    assert out.shape == (10, 9, 3) and out.dtype == np.float32


def test_an_evaluation_pass_compiles_the_network_once_per_bucket():
    model, variables = tiny_model()
    rng = np.random.default_rng(4)
    shapes = [(72, 88), (84, 68), (96, 80), (68, 92)]  # LR sides 17..24: one bucket, 24
    dataset = evaluation.Dataset("synthetic", [f"{i}.png" for i in range(len(shapes))],
                                 [lambda s=s: rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes])
    upscaler = inference.make_upscaler(model, variables=variables)
    methods = {"Bicubic": inference.BicubicUpscaler(4), "DRN": upscaler}
    before = len(_compiles)
    results = evaluation.evaluate(methods, [dataset], 4, progress=False)
    assert len(_compiles) - before == 1 == upscaler.compilations
    assert results.summary("DRN")["synthetic"]["images"] == 4
