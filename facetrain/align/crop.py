"""The field's aligned crop: the similarity transform that takes five points onto the template, then
``cv2.warpAffine`` (bilinear, black outside the photo), pixel for pixel insightface's ``face_align.norm_crop``.

The transform is Umeyama's least-squares similarity (TPAMI 1991, eqs. 38-43: rotation, one scale,
translation, never a reflection), computed in the points' own floating type as scikit-image's
``SimilarityTransform.estimate`` does for insightface: float32 points (what detectors return) give the
float32 arithmetic of the field's crops, and the same matrix to the last bit, which is what makes the
pixels equal (``warpAffine`` rounds coordinates to 1/32 pixel).
"""
from __future__ import annotations

import cv2
import numpy as np

from facetrain.align.template import BASE_SIZE, template


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The float64 2x3 matrix of the rotation + uniform scale + translation that maps points ``src [K,2]``
    onto ``dst [K,2]`` with the least squared error; a ValueError if ``src`` does not span the plane."""
    src, dst = np.asarray(src), np.asarray(dst)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(f"expected two [K, 2] point arrays, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    covariance = dst_centred.T @ src_centred / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    if np.count_nonzero(singular > singular.max() * 2 * np.finfo(float).eps) < 2:
        raise ValueError("the points coincide or lie on one line: no similarity transform is defined")
    signs = np.ones(2, dtype=np.float64)
    if np.linalg.det(covariance) < 0:
        signs[1] = -1  # the best fit would mirror the points: take the best rotation instead
    matrix = np.eye(3, dtype=np.float64)
    matrix[:2, :2] = u @ np.diag(signs) @ vt
    scale = 1.0 / src_centred.var(axis=0).sum() * (singular @ signs)
    matrix[:2, 2] = dst_mean - scale * (matrix[:2, :2] @ src_mean.T)
    matrix[:2, :2] *= scale
    return matrix[:2]


def crop_matrix(points: np.ndarray, size: int = BASE_SIZE) -> np.ndarray:
    """The 2x3 matrix that takes the photo's five ``points`` onto the template of a ``size`` crop."""
    return similarity_transform(points, template(size))


def crop(image: np.ndarray, points: np.ndarray, size: int = BASE_SIZE) -> np.ndarray:
    """The ``size x size`` aligned crop of ``image`` (any channel order) whose five ``points [5,2]`` (in
    the template's order, photo pixels) land on the template: insightface's ``norm_crop``."""
    return cv2.warpAffine(image, crop_matrix(points, size), (size, size), borderValue=0.0)
