"""The field's 10-fold verification protocol (LFW, CFP-FP, AgeDB-30, ...), as insightface computes it.

Embeddings are L2-normalised; distance is squared L2; thresholds ``0, 0.01, ..., 3.99``; 10
contiguous folds without shuffling; on each 9-fold train part the best-accuracy threshold is chosen
(the smallest on ties) and scored on the held-out fold. Accuracy is the mean over folds.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = np.arange(0, 4, 0.01)


def contiguous_folds(n: int, nrof_folds: int) -> list[np.ndarray]:
    """Indices of ``nrof_folds`` contiguous folds; the first ``n % nrof_folds`` get one extra item
    (the split of scikit-learn's ``KFold(shuffle=False)`` that insightface uses)."""
    return np.array_split(np.arange(n), nrof_folds)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each pair (rows 2i, 2i+1) after L2 normalisation."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return np.sum(np.square(embeddings[0::2] - embeddings[1::2]), axis=1)


def _accuracies(dist: np.ndarray, issame: np.ndarray) -> np.ndarray:
    """Accuracy of ``dist < t`` for every threshold t, vectorised: ``[len(THRESHOLDS)]``."""
    predict_same = dist[None, :] < THRESHOLDS[:, None]
    return np.mean(predict_same == issame[None, :], axis=1)


def evaluate(embeddings: np.ndarray, issame: np.ndarray, nrof_folds: int = 10) -> dict[str, float]:
    """10-fold verification accuracy: ``{"accuracy", "std", "best_threshold"}``.

    ``embeddings`` is ``[2P, d]`` (each row already the flip-summed embedding), ``issame`` ``[P]``.
    """
    issame = np.asarray(issame, dtype=bool)
    if len(embeddings) != 2 * len(issame):
        raise ValueError(f"{len(embeddings)} embeddings for {len(issame)} pairs; expected two per pair")
    dist = pair_distances(embeddings)
    fold_accuracy, fold_threshold = [], []
    for test in contiguous_folds(len(issame), nrof_folds):
        train = np.setdiff1d(np.arange(len(issame)), test)
        best = int(np.argmax(_accuracies(dist[train], issame[train])))  # first max = smallest threshold
        threshold = THRESHOLDS[best]
        fold_threshold.append(threshold)
        fold_accuracy.append(float(np.mean((dist[test] < threshold) == issame[test])))
    return {
        "accuracy": float(np.mean(fold_accuracy)),
        "std": float(np.std(fold_accuracy)),
        "best_threshold": float(np.mean(fold_threshold)),
    }
