"""read_picture and read_image: orientation (EXIF, TIFF) and bit depth taken from the file.

The eight orientations are written out here as NumPy compositions (the TIFF/EXIF definitions),
checked against Pillow's ``ImageOps.exif_transpose`` on 8-bit files, then used as the reference
for the 16-bit PNG and the TIFF paths, which do not go through Pillow's transpose.
"""

import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from drn_jax import image_io, png16

# Orientation tag value -> the stored (H, W, C) pixels as displayed.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                    # mirrored left-right
    3: lambda a: a[::-1, ::-1],                 # rotated 180°
    4: lambda a: a[::-1, :],                    # mirrored top-bottom
    5: lambda a: np.rot90(a[:, ::-1], 1),       # transpose: out[i, j] = a[j, i]
    6: lambda a: np.rot90(a, -1),               # rotated 90° clockwise to display
    7: lambda a: np.rot90(a[:, ::-1], -1),      # transverse: out[i, j] = a[H-1-j, W-1-i]
    8: lambda a: np.rot90(a, 1),                # rotated 90° counter-clockwise to display
}
ORIENTATIONS = sorted(UPRIGHT)


def _pixels(dtype, channels=3, seed=0):
    """A 3×5 image (not square, so a transpose and a rotation differ) of distinct values."""
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top + 1, (3, 5, channels), dtype=np.int64).astype(dtype)


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_the_references_are_pillows_exif_transpose(tmp_path):
    pixels = _pixels(np.uint8)
    for orientation in ORIENTATIONS:
        path = tmp_path / f"o{orientation}.png"
        Image.fromarray(pixels).save(path, exif=_exif(orientation))
        with Image.open(path) as image:
            upright = np.asarray(ImageOps.exif_transpose(image))
        np.testing.assert_array_equal(upright, UPRIGHT[orientation](pixels), err_msg=f"orientation {orientation}")
        # The transpose and the transverse are told apart by the pixel values, not just the shape.
        picture = image_io.read_picture(path)
        np.testing.assert_array_equal(np.round(picture.colour * 255).astype(np.uint8), upright)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_exif_orientation_of_a_16_bit_png(tmp_path, orientation):
    pixels = _pixels(np.uint16)
    data = png16.encode(pixels)
    exif = _exif(orientation).tobytes()
    exif = exif[6:] if exif.startswith(b"Exif\0\0") else exif  # eXIf holds the TIFF data alone
    ihdr_end = 8 + 8 + 13 + 4
    (tmp_path / "deep.png").write_bytes(data[:ihdr_end] + _chunk(b"eXIf", exif) + data[ihdr_end:])
    picture = image_io.read_picture(tmp_path / "deep.png")
    assert picture.bits == 16
    np.testing.assert_array_equal(np.round(picture.colour * 65535).astype(np.uint16), UPRIGHT[orientation](pixels))
    assert any(f"orientation {orientation} applied" in note for note in picture.notes) == (orientation != 1)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_tiff_orientation_tag_at_8_and_16_bits(tmp_path, orientation):
    # 8 bits, written by Pillow; Pillow's own reading of the tag agrees with the reference.
    pixels8 = _pixels(np.uint8, seed=1)
    Image.fromarray(pixels8).save(tmp_path / "p8.tif", tiffinfo={274: orientation})
    with Image.open(tmp_path / "p8.tif") as image:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(image)), UPRIGHT[orientation](pixels8))
    # Read by tifffile (a TIFF suffix), and by Pillow (the same bytes under another name).
    (tmp_path / "p8.img").write_bytes((tmp_path / "p8.tif").read_bytes())
    for name in ("p8.tif", "p8.img"):
        picture = image_io.read_picture(tmp_path / name)
        assert picture.bits == 8
        np.testing.assert_array_equal(np.round(picture.colour * 255).astype(np.uint8), UPRIGHT[orientation](pixels8))
        assert any(f"orientation {orientation} applied" in note for note in picture.notes) == (orientation != 1)

    # 16 bits with alpha, written by tifffile.
    pixels16 = _pixels(np.uint16, channels=4, seed=2)
    tifffile.imwrite(tmp_path / "p16.tif", pixels16, photometric="rgb", extrasamples=[2],
                     extratags=[(274, "H", 1, orientation, True)])
    picture = image_io.read_picture(tmp_path / "p16.tif")
    assert picture.bits == 16
    upright = UPRIGHT[orientation](pixels16)
    np.testing.assert_array_equal(np.round(picture.colour * 65535).astype(np.uint16), upright[..., :3])
    np.testing.assert_array_equal(np.round(picture.alpha * 65535).astype(np.uint16), upright[..., 3:])


def test_a_16_bit_grey_and_alpha_png_keeps_16_bits_and_stays_grey(tmp_path):
    pixels = _pixels(np.uint16, channels=2, seed=3)
    (tmp_path / "la.png").write_bytes(png16.encode(pixels))
    assert (tmp_path / "la.png").read_bytes()[24:26] == bytes([16, 4])  # IHDR: 16 bits, grey + alpha
    picture = image_io.read_picture(tmp_path / "la.png")
    assert picture.bits == 16 and picture.grey
    np.testing.assert_array_equal(np.round(picture.colour * 65535).astype(np.uint16), pixels[..., :1])
    np.testing.assert_array_equal(np.round(picture.alpha * 65535).astype(np.uint16), pixels[..., 1:])


def test_a_dark_16_bit_image_is_read_at_16_bits(tmp_path):
    """Pillow opens a PGM with maxval 65535 as mode "I"; all its values here are under 256."""
    values = np.array([[0, 1, 100], [200, 254, 255]], np.uint16)
    header = b"P5\n3 2\n65535\n"
    (tmp_path / "dark.pgm").write_bytes(header + values.astype(">u2").tobytes())
    with Image.open(tmp_path / "dark.pgm") as image:
        assert image.mode == "I"
    picture = image_io.read_picture(tmp_path / "dark.pgm")
    assert picture.bits == 16
    np.testing.assert_array_equal(picture.colour[..., 0], values / np.float32(65535))
    rgb = image_io.read_image(tmp_path / "dark.pgm")
    want = np.floor(values * 255 / 65535 + 0.5).astype(np.uint8)  # [[0 0 0] [1 1 1]]
    np.testing.assert_array_equal(rgb, np.repeat(want[..., None], 3, axis=-1))

    # A dark 16-bit grey PNG, the same values: 16 bits too.
    Image.fromarray(values).save(tmp_path / "dark.png")
    picture = image_io.read_picture(tmp_path / "dark.png")
    assert picture.bits == 16
    np.testing.assert_array_equal(picture.colour[..., 0], values / np.float32(65535))
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "dark.png"), np.repeat(want[..., None], 3, axis=-1))
