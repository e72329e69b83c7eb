"""Identity centres and the samples far from them (outliers within an identity).

Two procedures, as the literature gives them:

- sub-center ArcFace (insightface ``recognition/subcenter_arcface/drop.py``): each sample votes for its nearest of
  the class's ``K`` sub-centres; the sub-centre with most votes is the dominant one; samples whose cosine to it is
  not above ``cos(75 deg)`` are dropped;
- any other model: the identity's normalised mean embedding is the centre; samples not above ``cos(75 deg)`` from
  it are flagged, the centre is computed again without them, and the samples are judged once more against it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_OUTLIER_DEGREES = 75.0  # drop.py's --threshold


def angle_cosine(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def identity_centres(features: np.ndarray, labels: np.ndarray, num_classes: int,
                     keep: np.ndarray | None = None) -> np.ndarray:
    """L2-normalised mean of each identity's normalised ``features`` (rows ``keep`` only, when given), float32
    ``[num_classes, d]``; an identity without samples has a zero row."""
    rows = np.ones(len(labels), bool) if keep is None else keep
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, torch.from_numpy(labels[rows]), torch.from_numpy(features[rows]).double())
    norms = sums.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (sums / norms).float().numpy()


def cosine_to(features: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each sample's cosine to its own identity's centre (``features`` and ``centres`` normalised)."""
    return np.einsum("nd,nd->n", features, centres[labels])


def mean_outliers(features: np.ndarray, labels: np.ndarray, num_classes: int, degrees: float,
                  usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(outlier mask, centres)`` by the mean-embedding procedure, iterated once without the outliers (an identity
    whose samples are all flagged keeps its first centre)."""
    threshold = angle_cosine(degrees)
    centres = identity_centres(features, labels, num_classes, usable)
    outliers = usable & (cosine_to(features, centres, labels) <= threshold)
    refined = identity_centres(features, labels, num_classes, usable & ~outliers)
    emptied = np.linalg.norm(refined, axis=1) == 0
    refined[emptied] = centres[emptied]
    return usable & (cosine_to(features, refined, labels) <= threshold), refined


def dominant_subcentres(features: np.ndarray, labels: np.ndarray, subcentres: np.ndarray,
                        usable: np.ndarray) -> np.ndarray:
    """Each class's dominant sub-centre ``[C, d]``: the one most of its samples are nearest to (ties: the lower index)."""
    subcentres = subcentres / np.maximum(np.linalg.norm(subcentres, axis=2, keepdims=True), 1e-12)
    classes, k = subcentres.shape[:2]
    nearest = np.einsum("nkd,nd->nk", subcentres[labels[usable]], features[usable]).argmax(axis=1)
    votes = np.zeros((classes, k), np.int64)
    np.add.at(votes, (labels[usable], nearest), 1)
    return subcentres[np.arange(classes), votes.argmax(axis=1)].astype(np.float32)


def subcentre_outliers(features: np.ndarray, labels: np.ndarray, subcentres: np.ndarray, degrees: float,
                       usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(outlier mask, dominant centres)`` by sub-center ArcFace's procedure (drop.py)."""
    centres = dominant_subcentres(features, labels, subcentres, usable)
    return usable & (cosine_to(features, centres, labels) <= angle_cosine(degrees)), centres
