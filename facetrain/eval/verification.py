"""The field's 10-fold verification protocol (LFW, CFP-FP, AgeDB-30, ...), as insightface computes it.

Embeddings are L2-normalised; distance is squared L2; thresholds ``0, 0.01, ..., 3.99``; 10
contiguous folds without shuffling; on each 9-fold train part the best-accuracy threshold is chosen
(the smallest on ties) and scored on the held-out fold. Accuracy is the mean over folds.

TAR at FAR (1e-3, 1e-4), AUC and EER come from the ROC of all pairs at once (no folds), scored by
minus the squared distance, which orders pairs exactly as cosine similarity does (see
:mod:`facetrain.eval.roc`); a FAR the negative pairs cannot resolve is ``None`` (LFW's 3000
negative pairs resolve 1e-3, not 1e-4).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from facetrain.eval.roc import roc, roc_metrics

THRESHOLDS = np.arange(0, 4, 0.01)
FARS = (1e-3, 1e-4)


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


def evaluate(embeddings: np.ndarray, issame: np.ndarray, nrof_folds: int = 10) -> dict[str, Any]:
    """The protocol's figures: ``accuracy`` (mean over folds), ``std``, ``best_threshold`` (mean
    over folds), ``tar_at_far`` (``{"1e-3": TAR, "1e-4": TAR or None}``), ``auc`` and ``eer``.

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
        **roc_metrics(roc(-dist, issame), FARS),
    }
