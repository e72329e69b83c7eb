"""The agreement measure of ``scripts/benchmark.py align`` (normalised mean error to reference points), on
the real photos: a detector agrees perfectly with its own points and by 0.1 with points moved by a tenth of
the eye distance. (Its speed figures are measured, not tested: BENCHMARKS.md.)"""
from __future__ import annotations

import numpy as np

from facetrain.align import build_detector
from facetrain.align.benchmark import agreement, photos_at, read_reference
from facetrain.align.landmarks_file import format_line
from facetrain.data.images import decode_photo
from tests.align_helpers import FACES_IN, PHOTOS


def test_agreement_is_the_mean_point_error_over_the_eye_distance(tmp_path):
    photos = photos_at(PHOTOS, 640)
    yunet = build_detector("yunet")
    exact, moved = [], []
    for name, data, ratio in photos:
        for face in yunet.detect(decode_photo(data)):
            points = face.points / ratio  # the reference is in the photos' own pixels
            eyes = np.linalg.norm(points[0] - points[1])
            exact.append(format_line(name, points, 1.0))
            moved.append(format_line(name, points + [0.1 * eyes, 0], 1.0))
    (tmp_path / "exact.txt").write_text("\n".join(exact) + "\n")
    (tmp_path / "moved.txt").write_text("\n".join(moved) + "\n")
    assert sum(len(v) for v in read_reference(tmp_path / "exact.txt").values()) == sum(FACES_IN.values())
    same = agreement(photos, {"yunet": yunet}, read_reference(tmp_path / "exact.txt"))["yunet"]
    assert same["faces"] == sum(FACES_IN.values()) and same["nme"] < 1e-4
    shifted = agreement(photos, {"yunet": yunet}, read_reference(tmp_path / "moved.txt"))["yunet"]
    assert abs(shifted["nme"] - 0.1) < 1e-3
