"""Raw photos are read as they are meant to be seen: EXIF orientation, grey, CMYK, palette, 16-bit, alpha,
WebP; undecodable bytes are a one-line DataError."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from facetrain.data.images import decode_photo
from facetrain.errors import DataError


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def pattern(height: int = 30, width: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_photo_as_pillow_does(orientation, format):
    image = Image.fromarray(pattern())
    exif = image.getexif()
    exif[0x0112] = orientation
    data = encoded(image, format, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(decode_photo(data), expected)
    assert decode_photo(data).shape[:2] == ((30, 50) if orientation < 5 else (50, 30))


def test_grey_cmyk_palette_and_webp_photos_become_rgb():
    rgb = Image.fromarray(pattern())
    grey = decode_photo(encoded(rgb.convert("L"), "PNG"))
    assert grey.shape == (30, 50, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert np.array_equal(grey[..., 0], np.asarray(rgb.convert("L")))
    cmyk = decode_photo(encoded(rgb.convert("CMYK"), "JPEG", quality=100))
    assert cmyk.shape == (30, 50, 3) and np.abs(cmyk.astype(int) - pattern()).mean() < 8
    palette = rgb.convert("P")
    assert np.array_equal(decode_photo(encoded(palette, "PNG")), np.asarray(palette.convert("RGB")))
    assert np.array_equal(decode_photo(encoded(rgb, "WEBP", lossless=True)), pattern())


def test_sixteen_bit_values_are_scaled_to_eight():
    values = np.array([[0, 257, 65535, 32896]], np.uint16)
    assert decode_photo(encoded(Image.fromarray(values), "PNG"))[0, :, 0].tolist() == [0, 1, 255, 128]


def test_transparent_pixels_become_black():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 0], [128, 51]]
    photo = decode_photo(encoded(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert photo[..., 0].tolist() == [[200, 0], [100, 40]]


def test_undecodable_bytes_are_a_one_line_error():
    for data in (b"", b"not an image", encoded(Image.fromarray(pattern()), "JPEG")[:200]):
        with pytest.raises(DataError, match="x.jpg cannot be decoded"):
            decode_photo(data, "x.jpg")
