"""From raw photos to the field's aligned crops: faces with five points, and insightface's ``norm_crop``.

    from facetrain.align import detect, crop
    faces = detect(photo)                      # RGB uint8 [H, W, 3] -> [Face(box, points, score), ...]
    aligned = crop(photo, faces[0].points)     # [112, 112, 3], pixel for pixel insightface's norm_crop

``scripts/align.py`` runs this over folders of photos (docs/datasets.md, "From raw photos").
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from facetrain.align.choice import central
from facetrain.align.crop import crop, crop_matrix, similarity_transform
from facetrain.align.detectors import DETECTORS, Detector, build_detector
from facetrain.align.faces import DetectorSettings, Face
from facetrain.align.template import ARCFACE_DST, template


@functools.lru_cache(maxsize=4)
def _detector(name: str, settings: DetectorSettings) -> Detector:
    return build_detector(name, settings)


def detect(image: np.ndarray, detector: str = "yunet", settings: Optional[DetectorSettings] = None) -> list[Face]:
    """The faces of an RGB uint8 photo ``[H, W, 3]``, best score first, with their boxes and five points in
    photo pixels (one detector per name and settings is kept for the next call)."""
    return _detector(detector, settings or DetectorSettings()).detect(image)


__all__ = ["ARCFACE_DST", "DETECTORS", "Detector", "DetectorSettings", "Face", "build_detector", "central", "crop",
           "crop_matrix", "detect", "similarity_transform", "template"]
