"""The aligned crop is insightface's ``face_align.norm_crop``, pixel for pixel (insightface and scikit-image
run beside it here), for the sizes insightface knows; and the similarity transform under it is the least-squares
one and never a mirror image."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from facetrain.align import ARCFACE_DST, crop, crop_matrix, detect, similarity_transform, template
from facetrain.data.synthetic_faces import render_face, sample_identity
from tests.align_helpers import PHOTO_NAMES, photo

SIZES = (112, 224, 128, 256)


def norm_crop(image: np.ndarray, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """insightface's crop and matrix (its scikit-image call is deprecated in scikit-image 0.26: silenced)."""
    from insightface.utils import face_align

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.norm_crop(image, points, size), face_align.estimate_norm(points, size)


def random_similarity(rng: np.random.Generator, scale=(0.9, 1.3), shift=(15, 45)) -> np.ndarray:
    s, angle = rng.uniform(*scale), rng.uniform(-0.5, 0.5)
    return np.array([[s * np.cos(angle), -s * np.sin(angle), rng.uniform(*shift)],
                     [s * np.sin(angle), s * np.cos(angle), rng.uniform(*shift)]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_the_template_is_arcface_dst_scaled_as_insightface_scales_it():
    from insightface.utils import face_align

    assert ARCFACE_DST.dtype == np.float32 and np.array_equal(ARCFACE_DST, face_align.arcface_dst)
    np.testing.assert_array_equal(template(224), ARCFACE_DST * 2)
    np.testing.assert_allclose(template(128), ARCFACE_DST + [8, 0])  # the 112 face centred in 128
    np.testing.assert_allclose(template(256), ARCFACE_DST * 2 + [16, 0])
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        template(100)


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_crops_of_detected_faces_equal_norm_crop_pixel_for_pixel(name):
    image = photo(name)
    faces = detect(image)
    assert faces
    for face in faces:
        for size in SIZES:
            expected, matrix = norm_crop(image, face.points, size)
            np.testing.assert_array_equal(crop_matrix(face.points, size), matrix)
            np.testing.assert_array_equal(crop(image, face.points, size), expected)


def test_crops_at_random_points_equal_norm_crop_in_float32_and_float64():
    """Random faces: scaled, turned, moved and jittered templates, partly outside the photo; the points in
    float32 (as detectors give them) and float64 (as a text file read by numpy gives them)."""
    image = photo("t1.jpg")
    rng = np.random.default_rng(0)
    for _ in range(40):
        angle = rng.uniform(-0.8, 0.8)
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = ARCFACE_DST * rng.uniform(0.3, 5) @ turn.T + rng.uniform(-50, 1200, 2) + rng.normal(0, 3, (5, 2))
        for dtype in (np.float32, np.float64):
            for size in SIZES:
                expected, _ = norm_crop(image, points.astype(dtype), size)
                np.testing.assert_array_equal(crop(image, points.astype(dtype), size), expected)


def test_the_old_float64_transform_would_not_have_been_norm_crop():
    """Why the crop follows the points' float type: the same transform in float64 moves pixels of most
    crops of float32 points (facetrain's IJB crops did this before the align package)."""
    image = photo("t1.jpg")
    rng = np.random.default_rng(1)
    differing = 0
    for _ in range(20):
        points = (ARCFACE_DST * rng.uniform(0.5, 4) + rng.uniform(0, 800, 2) + rng.normal(0, 3, (5, 2))).astype(np.float32)
        in_float64 = cv2.warpAffine(image, similarity_transform(points.astype(np.float64), template(112).astype(np.float64)),
                                    (112, 112), borderValue=0.0)
        differing += not np.array_equal(in_float64, norm_crop(image, points, 112)[0])
    assert differing >= 10


def test_similarity_transform_inverts_a_known_one():
    rng = np.random.default_rng(0)
    reference = ARCFACE_DST.astype(np.float64)
    for _ in range(5):
        matrix = random_similarity(rng)
        estimate = similarity_transform(apply(matrix, reference), reference)
        np.testing.assert_allclose(estimate, cv2.invertAffineTransform(matrix), atol=1e-9)


def test_similarity_transform_is_the_least_squares_similarity():
    """With noisy points it equals the linear least-squares fit of x' = a x - b y + tx, y' = b x + a y + ty."""
    rng = np.random.default_rng(1)
    reference = ARCFACE_DST.astype(np.float64)
    src = reference + rng.normal(0, 3, (5, 2))
    dst = apply(random_similarity(rng), reference) + rng.normal(0, 3, (5, 2))
    x, y = src[:, 0], src[:, 1]
    design = np.concatenate([np.stack([x, -y, np.ones(5), np.zeros(5)], 1), np.stack([y, x, np.zeros(5), np.ones(5)], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    np.testing.assert_allclose(similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_similarity_transform_never_reflects():
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    matrix = similarity_transform(src, src * [-1, 1])  # the best fit would be a mirror image
    assert np.linalg.det(matrix[:, :2]) > 0


def test_points_on_one_line_are_refused():
    with pytest.raises(ValueError, match="one line"):
        similarity_transform(np.array([[0.0, 0], [1, 1], [2, 2], [3, 3], [4, 4]]), ARCFACE_DST)
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_DST)


def test_the_crop_undoes_a_loose_crop():
    rng = np.random.default_rng(2)
    face = render_face(sample_identity(rng), rng)
    matrix = random_similarity(rng)
    loose = cv2.warpAffine(face, matrix, (200, 210), borderValue=0.0)
    aligned = crop(loose, apply(matrix, ARCFACE_DST))
    error = np.abs(aligned.astype(int) - face.astype(int))[4:-4, 4:-4]
    assert error.mean() < 8  # two bilinear resamplings of a noisy image
    shifted = np.abs(np.roll(face, 3, axis=1).astype(int) - face.astype(int))[4:-4, 4:-4]
    assert error.mean() < shifted.mean() / 2
