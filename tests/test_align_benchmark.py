"""The agreement measure of ``scripts/benchmark.py align`` (normalised mean error to reference points), on
the real photos: a detector agrees perfectly with its own points and by 0.1 with points moved by a tenth of
the eye distance, a move that taking away the mean offset undoes; scatter it does not undo. (Its speed
figures are measured, not tested: BENCHMARKS.md.)"""
from __future__ import annotations

import numpy as np

from facetrain.align import build_detector
from facetrain.benchmarks.align import agreement, face_frame_error, nme_figures, photos_at, read_reference
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
            exact.append(format_line(name, points, 1.0))
            moved.append(format_line(name, points + 0.1 * (points[1] - points[0]), 1.0))  # along the eye line
    (tmp_path / "exact.txt").write_text("\n".join(exact) + "\n")
    (tmp_path / "moved.txt").write_text("\n".join(moved) + "\n")
    assert sum(len(v) for v in read_reference(tmp_path / "exact.txt").values()) == sum(FACES_IN.values())
    same = agreement(photos, {"yunet": yunet}, read_reference(tmp_path / "exact.txt"))["yunet"]
    assert same["faces"] == sum(FACES_IN.values()) and same["nme"] < 1e-4
    shifted = agreement(photos, {"yunet": yunet}, read_reference(tmp_path / "moved.txt"))["yunet"]
    assert abs(shifted["nme"] - 0.1) < 1e-3 and shifted["nme_offset_removed"] < 1e-3
    np.testing.assert_allclose(shifted["mean_offset"], [[-0.1, 0]] * 5, atol=1e-3)


def test_errors_are_measured_in_the_faces_frame_and_offset_removal_keeps_scatter():
    reference = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], np.float64)
    turned = reference @ np.array([[0, -1], [1, 0]]).T  # the same face turned 90 degrees
    np.testing.assert_allclose(face_frame_error(reference + [4, 0], reference), [[0.1, 0]] * 5)
    np.testing.assert_allclose(face_frame_error(turned + [0, 4], turned), [[0.1, 0]] * 5, atol=1e-12)
    np.testing.assert_allclose(face_frame_error(reference + [0, 4], reference), [[0, 0.1]] * 5)
    signs = np.where(np.arange(200) % 2, 1.0, -1.0)[:, None, None]
    scatter = signs * np.array([0.05, 0.0]) + np.array([0.0, 0.1])  # +-0.05 along, all 0.1 low
    figures = nme_figures(np.broadcast_to(scatter, (200, 5, 2)))
    assert figures["faces"] == 200 and abs(figures["nme"] - np.hypot(0.05, 0.1)) < 1e-4
    assert abs(figures["nme_offset_removed"] - 0.05) < 1e-3  # the common 0.1 goes, the scatter stays
    assert nme_figures(np.zeros((1, 5, 2)))["nme_offset_removed"] is None


def test_side_zero_keeps_each_photo_as_it_is():
    photos = photos_at(PHOTOS, 0)
    assert [name for name, _, _ in photos] == sorted(FACES_IN)
    for name, data, ratio in photos:
        assert data == (PHOTOS / name).read_bytes() and ratio == 1.0
