"""drn-upscale on real files: alpha, 16 bits, greyscale, EXIF, ICC, outscale, formats, devices."""

import jax
import ml_collections
import numpy as np
import pytest
import tifffile
from PIL import Image

from drn_jax import image_io, inference, loading, png16, upscale
from helpers import tiny_model


def keys(x):
    """The Keys cubic kernel (a = -0.5), written out here as an independent reference."""
    x = np.abs(x)
    return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1,
                    np.where(x <= 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.0))


def enlarge_1d(values, factor):
    """MATLAB bicubic enlargement of a 1-D signal: positions (x + 0.5)/f - 0.5, mirror borders."""
    n = len(values)
    out = []
    for x in range(n * factor):
        u = (x + 0.5) / factor - 0.5
        taps = np.arange(int(np.floor(u)) - 1, int(np.floor(u)) + 3)
        weights = keys(u - taps)
        index = np.where(taps < 0, -taps - 1, np.where(taps >= n, 2 * n - taps - 1, taps))
        out.append(np.sum(weights * np.asarray(values, np.float64)[index]) / weights.sum())
    return np.array(out)


@pytest.fixture
def tiny_checkpoint(monkeypatch):
    model, variables = tiny_model()
    config = ml_collections.ConfigDict({"scale": 4})
    monkeypatch.setattr(loading, "load_model", lambda *source, **kwargs: (config, model, variables))
    return model, variables


def run(args, capsys):
    status = upscale.main([*map(str, args), "--no_progress"])
    return status, capsys.readouterr().err


def test_alpha_is_bicubic_and_transparent_colour_does_not_bleed(tmp_path, capsys):
    # Alpha varies along the columns only: 0 0 0 1 1 1 0.5 0.5 (×255), rows alike.
    pattern = np.array([0, 0, 0, 255, 255, 255, 128, 128], np.uint8)
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 3] = pattern
    rgba[:, :3, 0] = 255  # pure red under alpha 0: hidden colour
    rgba[:, 3:, 1] = 200  # visible green
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    status, err = run([tmp_path / "a.png", "--output_dir", tmp_path / "out", "--method=bicubic",
                       "--scale=4"], capsys)
    assert status == 0, err
    out = np.asarray(Image.open(tmp_path / "out" / "a_x4.png"))
    assert out.shape == (24, 32, 4) and Image.open(tmp_path / "out" / "a_x4.png").mode == "RGBA"
    expected = np.floor(np.clip(enlarge_1d(pattern / 255, 4), 0, 1) * 255 + 0.5)
    np.testing.assert_allclose(out[..., 3], np.broadcast_to(expected, (24, 32)), atol=1)
    # The hidden red was replaced by the visible green next to it: no red anywhere.
    assert out[..., 0].max() == 0
    visible = out[..., 3] > 0
    assert np.abs(out[..., 1][visible].astype(int) - 200).max() <= 1


def test_alpha_through_the_network_and_palette_transparency(tmp_path, capsys, tiny_checkpoint):
    model, variables = tiny_checkpoint
    palette = Image.new("P", (9, 7))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1] * 31 + [0])
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    status, err = run([tmp_path / "p.png", "--output_dir", tmp_path / "out", "--alpha=network",
                       "--tile=0"], capsys)
    assert status == 0, err
    out = np.asarray(Image.open(tmp_path / "out" / "p_x4.png"))
    assert out.shape == (28, 36, 4)
    alpha = (np.asarray(palette) != 0).astype(np.float32)[..., None]
    net = inference.make_upscaler(model, variables=variables)
    expected = net.upscale_to(np.repeat(alpha, 3, -1), 8, grey=True)[..., 0]
    np.testing.assert_array_equal(out[..., 3], expected)


def test_sixteen_bit_round_trip_and_greyscale(tmp_path, capsys, tiny_checkpoint):
    model, variables = tiny_checkpoint
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (10, 12, 3)).astype(np.uint16)
    grey16 = rng.integers(0, 65536, (9, 11)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb16)
    (tmp_path / "rgb.png").write_bytes(png16.encode(rgb16))
    Image.fromarray(grey16).save(tmp_path / "grey.png")
    status, err = run([tmp_path / "rgb.tif", tmp_path / "rgb.png", tmp_path / "grey.png",
                       "--output_dir", tmp_path / "out"], capsys)
    assert status == 0, err
    net = inference.make_upscaler(model, variables=variables)
    # 16-bit colour in, the float network on the 16-bit values, 16 bits out.
    expected = net.upscale_to(rgb16 / np.float32(65535), 16)
    for name in ("rgb_x4.png", "rgb_x4_2.png"):
        written = image_io.read_picture(tmp_path / "out" / name)
        assert written.bits == 16 and written.colour.shape == (40, 48, 3)
        np.testing.assert_array_equal(np.round(written.colour * 65535).astype(np.uint16), expected)
    grey = Image.open(tmp_path / "out" / "grey_x4.png")
    assert grey.mode.startswith("I") and grey.size == (44, 36)
    want = net.upscale_to(np.repeat(grey16[..., None] / np.float32(65535), 3, -1), 16, grey=True)
    np.testing.assert_array_equal(np.asarray(grey).astype(np.uint16), want[..., 0])
    assert len(np.unique(want)) > 256  # really more than 8 bits of output


def test_exif_orientation_icc_outscale_and_formats(tmp_path, capsys):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    profile = b"fake ICC profile bytes" * 4
    Image.fromarray(pixels).save(tmp_path / "rot.png", exif=exif, icc_profile=profile)
    status, err = run([tmp_path / "rot.png", "--output_dir", tmp_path / "out", "--method=bicubic",
                       "--scale=4"], capsys)
    assert status == 0, err
    assert "EXIF orientation 6 applied" in err
    out = Image.open(tmp_path / "out" / "rot_x4.png")
    assert out.size == (6 * 4, 10 * 4)  # displayed upright: width 6, height 10
    assert out.info.get("icc_profile") == profile

    # --outscale 3 on a horizontal ramp: bicubic reproduces linear functions away from the
    # borders, so interior values are the ramp at each output pixel's LR position.
    ramp = np.tile(np.linspace(40, 200, 12).round().astype(np.uint8), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    status, err = run([tmp_path / "ramp.png", "--output_dir", tmp_path / "o3", "--method=bicubic",
                       "--scale=4", "--outscale=3"], capsys)
    assert status == 0, err
    out = np.asarray(Image.open(tmp_path / "o3" / "ramp_x3.png"))
    assert out.shape == (24, 36)
    slope = (ramp[0, -1] - ramp[0, 0]) / 11.0
    x = np.arange(36)
    want = ramp[0, 0] + slope * ((x + 0.5) / 3 - 0.5)
    inner = slice(6, 30)  # two LR pixels from each border, at x3
    assert np.abs(out[10, inner] - want[inner]).max() <= 1.01

    # JPEG / WebP with quality; an existing output is kept without --overwrite.
    for fmt in ("jpg", "webp"):
        status, err = run([tmp_path / "ramp.png", "--output_dir", tmp_path / "of", "--method=bicubic",
                           "--scale=4", f"--format={fmt}", "--quality=90"], capsys)
        assert status == 0 and Image.open(tmp_path / "of" / f"ramp_x4.{fmt}").size == (48, 32), err
    before = (tmp_path / "of" / "ramp_x4.jpg").read_bytes()
    status, err = run([tmp_path / "ramp.png", "--output_dir", tmp_path / "of", "--method=bicubic",
                       "--scale=4", "--format=jpg", "--quality=20"], capsys)
    assert status == 1 and "exists; pass --overwrite" in err
    assert (tmp_path / "of" / "ramp_x4.jpg").read_bytes() == before
    status, err = run([tmp_path / "ramp.png", "--output_dir", tmp_path / "of", "--method=bicubic",
                       "--scale=4", "--format=jpg", "--quality=20", "--overwrite"], capsys)
    assert status == 0 and (tmp_path / "of" / "ramp_x4.jpg").read_bytes() != before


def test_outscale_sizes_round_half_up(tmp_path, capsys):
    # 21 × 2.5 = 52.5 and 19 × 2.5 = 47.5: half up gives 53 and 48 (Python's round: 52 and 48).
    Image.fromarray(np.full((21, 19, 3), 128, np.uint8)).save(tmp_path / "odd.png")
    status, err = run([tmp_path / "odd.png", "--output_dir", tmp_path / "out", "--method=bicubic",
                       "--scale=2", "--outscale=2.5"], capsys)
    assert status == 0, err
    assert Image.open(tmp_path / "out" / "odd_x2.5.png").size == (48, 53)  # (width, height)
    picture = image_io.read_picture(tmp_path / "odd.png")
    bicubic = inference.make_upscaler(lambda batch: upscale.imresize_host(batch, 2), 2)
    for outscale, want in ((2.5, (53, 48)), (1.5, (32, 29)), (0.01, (1, 1)), (3.0, (63, 57))):
        assert upscale.upscale_picture(picture, bicubic, outscale=outscale).shape[:2] == want, outscale
        assert upscale.outscale_size(21, 19, outscale) == want, outscale


def test_tiles_over_eight_devices_equal_one_device_and_untiled():
    model, variables = tiny_model()
    assert len(jax.devices()) == 8
    lr = np.random.default_rng(3).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    one = inference.make_upscaler(model, variables=variables, tile=20)
    many = inference.make_upscaler(model, variables=variables, tile=20, devices=jax.devices())
    assert many.batch_size == 8 and one.batch_size == 1
    untiled = inference.make_upscaler(model, variables=variables)
    a, b = one.upscale_float(lr), many.upscale_float(lr)
    np.testing.assert_allclose(b, a, atol=1e-6)
    np.testing.assert_allclose(a, untiled.upscale_float(lr), atol=1e-5)  # no seams
    assert many.shapes == [(8, *one.plan(37, 45).shape, 3)] == [(8, 17, 23, 3)]  # 15 tiles of ≤ 20²


def test_bad_inputs_each_one_line_and_the_batch_goes_on(tmp_path, capsys):
    rng = np.random.default_rng(4)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)).save(folder / "good.png")
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.full((1, 1, 3), 77, np.uint8)).save(folder / "dot.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "big.png")
    Image.fromarray(rng.integers(0, 256, (5, 6, 4), dtype=np.uint8), "CMYK").save(folder / "cmyk.jpg")
    frames = [Image.fromarray(np.full((4, 5, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "nested" / "a" / "b").mkdir(parents=True)
    status, err = run([folder, tmp_path / "nested", "--output_dir", tmp_path / "out", "--method=bicubic",
                       "--scale=4", "--max_pixels=1000"], capsys)
    assert status == 1
    lines = err.splitlines()

    def one(prefix, path, text):
        found = [line for line in lines if line.startswith(f"{prefix}: {path}") and text in line]
        assert len(found) == 1, (path, err)

    one("error", folder / "truncated.png", "corrupt or truncated")
    one("error", folder / "big.png", "over the limit of 1000")
    one("error", tmp_path / "nested", "a folder without images")
    one("note", folder / "cmyk.jpg", "CMYK image converted to RGB")
    one("note", folder / "anim.gif", "first frame")
    assert "Traceback" not in err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["anim_x4.png", "cmyk_x4.png", "dot_x4.png", "good_x4.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "dot_x4.png")), np.full((4, 4, 3), 77))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "anim_x4.png")), np.full((16, 20, 3), 10))
    assert "upscaled 4 of 7 images" in err
