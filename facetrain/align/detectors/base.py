"""What every detector does: scale the photo for detection, find faces, map them back to photo pixels."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Optional

import cv2
import numpy as np

from facetrain.align.faces import DetectorSettings, Face


class Detector(ABC):
    """Finds faces with five points in RGB uint8 photos. ``detect`` returns every face scoring at least the
    threshold, in photo pixels, best score first; the size filter is the caller's (see :mod:`facetrain.align.choice`)."""

    name: ClassVar[str]
    default_threshold: ClassVar[float]
    points_sha256: Optional[str] = None  # the model that places the five points, where it is not the detector's own

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.threshold = settings.score_threshold if settings.score_threshold is not None else self.default_threshold
        self.min_face: float = settings.min_face

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]:
        """The faces of one RGB uint8 photo ``[H, W, 3]``."""

    def faces(self, image: np.ndarray, name: str) -> list[Face]:
        """The faces of photo ``name`` (a detector looks at the pixels; a landmarks file looks the name up)."""
        return self.detect(image)

    def points_key(self) -> dict[str, str]:
        """What the crops depend on beyond the detector's model: the model that places the five points, if another."""
        return {} if self.points_sha256 is None else {"points_model_sha256": self.points_sha256}

    def listed(self) -> Optional[list[str]]:
        """The photos this source knows, by name (None: any photo)."""
        return None


def scaled_for_detection(image: np.ndarray, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image with its longer side at most input_size, its (x, y) scale factors)``: area interpolation,
    never enlarged."""
    height, width = image.shape[:2]
    ratio = input_size / max(height, width)
    if ratio >= 1:
        return image, np.ones(2, np.float32)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    scale = np.array([size[0] / width, size[1] / height], np.float32)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def ordered(faces: list[Face]) -> list[Face]:
    """Best score first; ties by position, so that the order never depends on the detector's internals."""
    return sorted(faces, key=lambda f: (-f.score, float(f.box[1]), float(f.box[0])))
