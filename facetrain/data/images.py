"""Image decoding and encoding shared by the readers and writers (RGB uint8, HWC).

Decoding a 112x112 face JPEG on one core (BENCHMARKS.md): simplejpeg is the fastest, OpenCV close
behind, torchvision.io about two thirds and PIL under half of OpenCV. All four give identical pixels
(libjpeg-turbo, accurate DCT). :func:`decode_image` uses simplejpeg when it is installed, else
OpenCV (installed with albumentations), and OpenCV for whatever simplejpeg cannot read (PNG, CMYK).
"""
from __future__ import annotations

import io
import warnings
from typing import Callable, Optional

import cv2
import numpy as np
from PIL import Image

from facetrain.errors import DataError

try:
    import simplejpeg
except ImportError:  # optional: pip install simplejpeg
    simplejpeg = None

Decoder = Callable[[bytes], np.ndarray]


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.11 converts while decoding


def decode_opencv(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("OpenCV cannot decode it")
    return image if _IMREAD_RGB is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_torchvision(data: bytes) -> np.ndarray:
    """torchvision.io (deprecated there since 0.29 in favour of TorchCodec; kept for comparison)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image as tv_decode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB).permute(1, 2, 0).numpy()


def decode_simplejpeg(data: bytes) -> np.ndarray:
    if simplejpeg is None:
        raise ValueError("simplejpeg is not installed")
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def decode_fastest(data: bytes) -> np.ndarray:
    """simplejpeg for JPEGs when installed, OpenCV for everything else (and as its fallback)."""
    if simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:  # e.g. CMYK or an unusual subsampling: let OpenCV try
            pass
    return decode_opencv(data)


DECODERS: dict[str, Decoder] = {
    "auto": decode_fastest, "simplejpeg": decode_simplejpeg, "opencv": decode_opencv,
    "torchvision": decode_torchvision, "pil": decode_pil,
}


def decode_image(data: bytes, what: str = "image", size: Optional[int] = None) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 array ``[H, W, 3]``, resized to ``size x size`` if given.

    Undecodable bytes raise a :class:`DataError` naming ``what``.
    """
    try:
        image = decode_fastest(data)
    except Exception as exc:  # decoders raise several unrelated types for bad bytes
        raise DataError(f"{what} cannot be decoded ({exc.__class__.__name__}: {exc})",
                        "the file is corrupt or not an image; re-create it") from None
    return image if size is None else resize_square(image, size)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` resized to ``size x size`` (area interpolation when shrinking); unchanged if it is already."""
    if image.shape[:2] == (size, size):
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 array -> JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 array -> PNG bytes (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


# EXIF orientation -> how to turn the stored pixels upright (numpy: rot90 turns counter-clockwise)
_ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of encoded image bytes (1, upright, when there is none)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # PIL raises many types for what it cannot parse: such a file has no orientation to honour
        return 1
    return orientation if orientation in _ORIENTATIONS else 1


def decode_photo(data: bytes, what: str = "photo") -> np.ndarray:
    """A raw photo as it is meant to be seen, RGB uint8 ``[H, W, 3]``: turned upright by its EXIF
    orientation; grey, CMYK and palette images converted; 16-bit values scaled to 8 bits; transparent
    pixels blended onto black (the colour of the crop's border). JPEG, PNG, WebP, BMP, TIFF and whatever
    else OpenCV reads; undecodable bytes raise a :class:`DataError` naming ``what``."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise DataError(f"{what} cannot be decoded", "the file is corrupt or not an image; re-create or remove it")
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.uint16)
        image = cv2.cvtColor(((image[..., :3] * alpha + 127) // 255).astype(np.uint8), cv2.COLOR_BGR2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    turn = _ORIENTATIONS.get(exif_orientation(data))
    return np.ascontiguousarray(turn(image)) if turn is not None else image
