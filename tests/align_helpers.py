"""Helpers of the alignment tests: the real photos of tests/data/photos (see SOURCES.md there)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from facetrain.data.images import decode_photo

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"
PHOTO_NAMES = ("astronaut.jpg", "biden.jpg", "obama.jpg", "obama_and_biden.jpg", "t1.jpg", "two_people.jpg")
FACES_IN = {"astronaut.jpg": 1, "biden.jpg": 1, "obama.jpg": 1, "obama_and_biden.jpg": 3, "t1.jpg": 6, "two_people.jpg": 2}


def photo(name: str) -> np.ndarray:
    """A test photo, RGB uint8."""
    return decode_photo((PHOTOS / name).read_bytes(), name)


class StandInSession:
    """Plays an SCRFD model with keypoints (strides 8, 16, 32, two anchors, 640x640 input) for insightface's
    ``SCRFD`` class: each face ``(cell, box, points, score)`` is answered by the stride-16 anchor at ``cell``
    (box and points in network-input pixels). It keeps the last blob it was given."""

    def __init__(self, faces: list) -> None:
        self.faces, self.blob = faces, None

    def get_inputs(self):
        return [SimpleNamespace(name="input.1", shape=[1, 3, 640, 640])]

    def get_outputs(self):
        return [SimpleNamespace(name=f"out{i}", shape=[1, 1]) for i in range(9)]

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def set_providers(self, providers):
        pass

    def run(self, names, feed):
        self.blob = feed["input.1"]
        scores, boxes, points = [], [], []
        for stride in (8, 16, 32):
            anchors = (640 // stride) ** 2 * 2
            score, box, kps = np.zeros((anchors, 1), np.float32), np.zeros((anchors, 4), np.float32), \
                np.zeros((anchors, 10), np.float32)
            for cell, face_box, face_points, face_score in (self.faces if stride == 16 else []):
                row = (cell[1] * (640 // stride) + cell[0]) * 2
                centre = np.array(cell, np.float32) * stride
                score[row] = face_score
                box[row] = np.concatenate([centre - face_box[:2], face_box[2:] - centre]) / stride
                kps[row] = (np.asarray(face_points) - centre).reshape(10) / stride
            scores.append(score)
            boxes.append(box)
            points.append(kps)
        return scores + boxes + points
