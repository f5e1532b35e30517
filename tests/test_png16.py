"""drn_jax.png16: 16-bit PNGs of every colour type, every row filter, and bad files.

The filtered scanlines are built from the PNG specification (the reference `filter_rows`, with
which benchmarks/png16_decode.py writes its files), not with the module; Pillow, which reads
16-bit grey PNGs at 16 bits and the other 16-bit types at 8 (the high byte), checks what `encode`
writes; scikit-image's 16-bit RGB chessboard, written by libpng with filters 0, 1, 2 and 4, is a
file from another encoder.
"""

import pathlib
import struct
import zlib

import numpy as np
import pytest
import skimage
from PIL import Image

from drn_jax import image_io, png16
from drn_jax.errors import ImageReadError
from helpers import REPO, load_script

filter_rows = load_script(REPO / "benchmarks" / "png16_decode.py").filter_rows

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
# (height, width): a pixel, a row, a column, and images wider and taller than they are long,
# so that the anti-diagonals have every length.
SIZES = [(1, 1), (1, 9), (9, 1), (5, 13), (13, 5), (17, 17)]


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_file(path: pathlib.Path, pixels: np.ndarray, kinds=None, *, interlace: int = 0,
             depth: int = 16, scanlines: bytes | None = None) -> pathlib.Path:
    """A PNG written here, chunk by chunk, with the rows filtered as ``kinds`` says (default 0)."""
    height, width, channels = pixels.shape
    if scanlines is None:
        scanlines = filter_rows(pixels, [0] * height if kinds is None else kinds)
    header = struct.pack(">IIBBBBB", width, height, depth, COLOUR_TYPES[channels], 0, 0, interlace)
    # Two IDAT chunks: the decoder must join them.
    data = zlib.compress(scanlines)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", b"Comment\0drn")
                     + chunk(b"IDAT", data[:7]) + chunk(b"IDAT", data[7:]) + chunk(b"IEND", b""))
    return path


def random_pixels(rng, height, width, channels, *, few_values=False):
    if few_values:  # many equal neighbours: Paeth's ties, Average's carries
        levels = np.array([0, 1, 255, 256, 257, 0x7FFF, 0x8080, 0xFF00, 65535], np.uint16)
        return rng.choice(levels, (height, width, channels))
    return rng.integers(0, 65536, (height, width, channels)).astype(np.uint16)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_encode_decode_round_trip_of_every_colour_type(tmp_path, channels):
    rng = np.random.default_rng(channels)
    profile = b"an ICC profile" * 3
    for height, width in SIZES:
        pixels = random_pixels(rng, height, width, channels)
        pixels[0, 0] = 65535  # the extremes survive
        pixels[-1, -1] = 0
        path = tmp_path / f"{height}x{width}.png"
        path.write_bytes(png16.encode(pixels, profile, compress_level=1))
        assert png16.read_header(path) == (16, COLOUR_TYPES[channels])
        decoded = png16.decode(path)
        assert decoded.dtype == np.uint16 and decoded.shape == pixels.shape
        np.testing.assert_array_equal(decoded, pixels)
        # Another decoder: Pillow, at 16 bits for grey, else the high bytes (grey + alpha as RGBA).
        with Image.open(path) as image:
            assert image.info["icc_profile"] == profile
            seen = np.asarray(image)
        if channels == 1:
            np.testing.assert_array_equal(seen, pixels[..., 0])
        else:
            high = (pixels >> 8).astype(np.uint8)
            want = high[..., [0, 0, 0, 1]] if channels == 2 else high
            np.testing.assert_array_equal(seen.reshape(want.shape), want)


def test_encode_writes_filter_0_and_the_compress_level(tmp_path):
    pixels = random_pixels(np.random.default_rng(0), 4, 6, 3)
    data = png16.encode(pixels, compress_level=1)
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8: start - 4])[0]
    body = data[start: start + length]
    assert zlib.decompress(body) == filter_rows(pixels, [0] * 4)
    assert body == zlib.compress(filter_rows(pixels, [0] * 4), 1)
    assert len(png16.encode(np.zeros((64, 64, 3), np.uint16), compress_level=9)) < len(
        png16.encode(np.zeros((64, 64, 3), np.uint16), compress_level=0))
    with pytest.raises(TypeError, match="uint16"):
        png16.encode(pixels.astype(np.uint8))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("few_values", [False, True])
def test_every_row_filter_is_undone(tmp_path, channels, few_values):
    rng = np.random.default_rng(10 * channels + few_values)
    for height, width in SIZES:
        pixels = random_pixels(rng, height, width, channels, few_values=few_values)
        plans = [[kind] * height for kind in range(5)]  # one filter on every row, for each filter
        plans.append(list(rng.integers(0, 5, height)))  # mixed, as encoders choose them per row
        plans.append([4 - y % 5 for y in range(height)])  # every filter after every other
        for kinds in plans:
            path = png_file(tmp_path / "f.png", pixels, kinds)
            np.testing.assert_array_equal(png16.decode(path), pixels, err_msg=f"{height}x{width} filters {kinds}")


def _chunk_bodies(data: bytes, kind: bytes) -> list[bytes]:
    offset, bodies = 8, []
    while offset < len(data):
        length, name = struct.unpack(">I4s", data[offset: offset + 8])
        if name == kind:
            bodies.append(data[offset + 8: offset + 8 + length])
        offset += 12 + length
    return bodies


def test_a_file_from_libpng():
    """scikit-image's 16-bit RGB chessboard (filters 0, 1, 2, 4): Pillow's 8-bit reading is the
    high byte of each value; the low bytes go through the same code (PNG filters work per byte)."""
    path = pathlib.Path(skimage.__file__).parent / "data" / "chessboard_RGB.png"
    assert png16.read_header(path) == (16, 2) and png16.is_deep_colour(path)
    scanlines = zlib.decompress(b"".join(_chunk_bodies(path.read_bytes(), b"IDAT")))
    kinds = set(scanlines[:: 200 * 6 + 1])
    assert {1, 2, 4} <= kinds  # the filters this test is about
    pixels = png16.decode(path)
    assert pixels.shape == (200, 200, 3)
    with Image.open(path) as image:
        np.testing.assert_array_equal((pixels >> 8).astype(np.uint8), np.asarray(image))


def test_headers_and_which_pngs_need_this_decoder(tmp_path):
    for channels, deep in [(1, False), (2, True), (3, True), (4, True)]:
        path = png_file(tmp_path / f"c{channels}.png", np.zeros((2, 3, channels), np.uint16))
        assert png16.read_header(path) == (16, COLOUR_TYPES[channels])
        assert png16.is_deep_colour(path) == deep
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb8.png")
    assert png16.read_header(tmp_path / "rgb8.png") == (8, 2)
    assert not png16.is_deep_colour(tmp_path / "rgb8.png")
    (tmp_path / "no.png").write_bytes(b"GIF89a" + bytes(40))
    assert png16.read_header(tmp_path / "no.png") is None and not png16.is_deep_colour(tmp_path / "no.png")


def one_line_error(path: pathlib.Path, *words: str) -> str:
    with pytest.raises(ImageReadError) as caught:
        png16.decode(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message
    return message


def test_interlaced_and_other_depths_are_refused_in_one_line(tmp_path):
    pixels = random_pixels(np.random.default_rng(3), 4, 4, 3)
    one_line_error(png_file(tmp_path / "adam7.png", pixels, interlace=1), "interlaced", "without interlacing")
    eight = png_file(tmp_path / "eight.png", pixels, depth=8, scanlines=b"\0" * (4 * 13))
    one_line_error(eight, "bit depth 8", "Pillow")
    # Through read_picture (the upscaler's reader): the same line.
    with pytest.raises(ImageReadError, match="interlaced"):
        image_io.read_picture(tmp_path / "adam7.png")


def test_truncated_and_corrupt_files_are_one_line_errors(tmp_path):
    pixels = random_pixels(np.random.default_rng(4), 6, 7, 4)
    good = png16.encode(pixels)
    idat = good.index(b"IDAT")
    cases = {
        "cut in IDAT": good[: idat + 20],
        "cut in IHDR": good[:20],
        "no signature": b"\0" * 8 + good[8:],
        "zlib garbage": good[: idat + 4] + bytes(b ^ 0x5A for b in good[idat + 4: idat + 40]) + good[idat + 40:],
    }
    short_rows = filter_rows(pixels, [0] * 6)[:-5]  # a valid zlib stream, five bytes short
    cases["short image data"] = png_file(tmp_path / "s.png", pixels, scanlines=short_rows).read_bytes()
    bad_filter = bytearray(filter_rows(pixels, [0] * 6))
    bad_filter[2 * (7 * 8 + 1)] = 5  # row 2's filter byte
    cases["filter type 5"] = png_file(tmp_path / "b.png", pixels, scanlines=bytes(bad_filter)).read_bytes()
    for name, data in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.png"
        path.write_bytes(data)
        words = ("PNG",) if name == "no signature" else ("corrupt or truncated",)
        message = one_line_error(path, *words)
        if name == "filter type 5":
            assert "filter type 5" in message
        # read_picture refuses each one in one line naming the file too (Pillow or png16 first).
        if name != "no signature":
            with pytest.raises(ImageReadError) as caught:
                image_io.read_picture(path)
            assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
