"""The field's five-point template (insightface's ``arcface_dst``) and how it scales with the crop size.

The points are, in order: left eye, right eye, nose tip, left and right mouth corner, as seen in the
image (the person's right eye is the left one). They are the 96x112 template of SphereFace shifted 8 pixels
right, the template behind MS1M, Glint360K, WebFace and the IJB crops. insightface keeps them in float32,
and the crop's arithmetic follows the template's type, so they are float32 here too.
"""
from __future__ import annotations

import numpy as np

BASE_SIZE = 112
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
POINT_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")


def template(size: int = BASE_SIZE) -> np.ndarray:
    """Where the five points land in a ``size x size`` crop, as insightface's ``estimate_norm`` places them:
    multiples of 112 scale the template by ``size / 112``; other multiples of 128 scale it by ``size / 128``
    and shift it right by ``8 * size / 128`` (the 112 template centred in a 128 square)."""
    if size % BASE_SIZE == 0:
        ratio, shift = size / BASE_SIZE, 0.0
    elif size % 128 == 0:
        ratio = size / 128
        shift = 8.0 * ratio
    else:
        raise ValueError(f"crop size {size} is not a multiple of 112 or 128")
    points = ARCFACE_DST * ratio
    points[:, 0] += shift
    return points


def valid_size(size: int) -> bool:
    """Whether :func:`template` knows ``size``."""
    return size > 0 and (size % BASE_SIZE == 0 or size % 128 == 0)
