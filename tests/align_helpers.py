"""Helpers of the alignment tests: the real photos of tests/data/photos (see SOURCES.md there)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facetrain.data.images import decode_photo

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"
PHOTO_NAMES = ("astronaut.jpg", "biden.jpg", "obama.jpg", "obama_and_biden.jpg", "t1.jpg", "two_people.jpg")
FACES_IN = {"astronaut.jpg": 1, "biden.jpg": 1, "obama.jpg": 1, "obama_and_biden.jpg": 3, "t1.jpg": 6, "two_people.jpg": 2}


def photo(name: str) -> np.ndarray:
    """A test photo, RGB uint8."""
    return decode_photo((PHOTOS / name).read_bytes(), name)
