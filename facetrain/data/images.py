"""Image decoding and encoding shared by the readers and writers (RGB uint8, HWC)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from facetrain.errors import DataError


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 array ``[H, W, 3]``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # PIL raises several unrelated types for bad bytes
        raise DataError(f"{what} cannot be decoded ({exc.__class__.__name__}: {exc})",
                        "the file is corrupt or not an image; re-create it") from None


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 array -> JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
