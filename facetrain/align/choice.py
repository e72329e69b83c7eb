"""Which face of a photo to crop: by position (the default), or by likeness to the identity's other photos.

By position: the largest face nearest the centre, insightface's rule (``SCRFD.detect`` with ``max_num``):
the face whose box area minus twice the squared distance from its centre to the photo's centre is largest.
By likeness (``--pick model=CKPT``): the photos of an identity with one face define its centre (the mean of
their normalised embeddings); in a photo with several faces the face nearest that centre (cosine) is kept.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from facetrain.align.faces import Face

POSITION_RULE = ("the largest face nearest the centre: largest box area minus twice the squared distance of the "
                 "box centre from the photo centre (insightface's SCRFD.detect, max_num=1)")
LIKENESS_RULE = ("the face most like the identity: highest cosine similarity of its embedding to the mean embedding "
                 "of the identity's photos with one face")


def big_enough(faces: Sequence[Face], min_face: float) -> list[Face]:
    """The faces whose size (the box's longer side) is at least ``min_face`` pixels."""
    return [face for face in faces if face.size >= min_face]


def central(faces: Sequence[Face], shape: tuple[int, ...]) -> Face:
    """The face insightface keeps: area - 2 * squared distance to the photo centre ``(w // 2, h // 2)``,
    largest first (ties: the earlier face)."""
    centre = np.array([shape[1] // 2, shape[0] // 2], np.float64)

    def value(face: Face) -> float:
        box = face.box.astype(np.float64)
        area = (box[2] - box[0]) * (box[3] - box[1])
        return float(area - 2.0 * np.sum((face.centre.astype(np.float64) - centre) ** 2))

    return max(faces, key=value)  # max keeps the first of equal values


def identity_centre(embeddings: np.ndarray) -> np.ndarray:
    """The normalised mean of the normalised ``embeddings [N, d]``."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    return mean / np.linalg.norm(mean)


def most_alike(embeddings: np.ndarray, centre: np.ndarray) -> tuple[int, float]:
    """``(index, cosine)`` of the row of ``embeddings [K, d]`` nearest ``centre`` (ties: the first)."""
    cosines = embeddings @ centre / np.linalg.norm(embeddings, axis=1)
    best = int(np.argmax(cosines))
    return best, float(cosines[best])
