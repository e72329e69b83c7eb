"""ROC figures shared by the verification sets and IJB-B/C: TAR at FAR, AUC and EER.

Scores are similarities (higher = more likely the same identity). TAR at a FAR follows insightface's
IJB evaluation (``recognition/_evaluation_/ijb/ijb_11.py``): scikit-learn's ``roc_curve`` with its
defaults, then the TPR of the ROC point whose FPR is nearest to the FAR (the largest TPR among equally
near points). A FAR is reported only where the negative pairs resolve it (at least ``1/FAR`` of them,
so that one false accept is a rate no larger than the FAR); otherwise it is ``None``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np


@dataclass
class ROC:
    """A ROC curve (``fpr`` non-decreasing) and the pair counts behind it."""

    fpr: np.ndarray
    tpr: np.ndarray
    positives: int
    negatives: int


def far_key(far: float) -> str:
    """The name of a FAR in tables and JSON: ``1e-3``, ``1e-6``, ``2e-5``."""
    return format(far, ".0e").replace("e-0", "e-")


def roc(scores: np.ndarray, labels: np.ndarray) -> Optional[ROC]:
    """The ROC of similarity ``scores`` for boolean ``labels`` (None unless both kinds of pair occur)."""
    labels = np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    from sklearn.metrics import roc_curve  # scikit-learn takes 2 s to import: not before a run's first step

    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64))
    return ROC(fpr, tpr, positives, negatives)


def tar_at_far(curve: ROC, far: float) -> Optional[float]:
    """TPR at the ROC point nearest to ``far`` (insightface's rule); None if ``far < 1/negatives``."""
    if curve.negatives * far < 1:
        return None
    flipped = np.abs(curve.fpr[::-1] - far)
    return float(curve.tpr[len(curve.fpr) - 1 - int(np.argmin(flipped))])


def equal_error_rate(curve: ROC) -> float:
    """The rate where false accepts equal false rejects, on the ROC's straight segments."""
    gap = 1.0 - curve.tpr - curve.fpr  # false-reject rate minus false-accept rate, falls from 1 to -1
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return float(curve.fpr[0])
    step = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(curve.fpr[i - 1] + step * (curve.fpr[i] - curve.fpr[i - 1]))


def roc_metrics(curve: Optional[ROC], fars: Sequence[float]) -> dict[str, Any]:
    """``{"tar_at_far": {far_key: TAR or None}, "auc", "eer"}`` of ``curve`` (all None without one)."""
    if curve is None:
        return {"tar_at_far": {far_key(f): None for f in fars}, "auc": None, "eer": None}
    from sklearn.metrics import auc

    return {
        "tar_at_far": {far_key(f): tar_at_far(curve, f) for f in fars},
        "auc": float(auc(curve.fpr, curve.tpr)),
        "eer": equal_error_rate(curve),
    }
