"""Verification figures as PNG: the ROC curve on a log FAR axis, and the score histograms of positive
and negative pairs (the X2-Softmax paper's figure 7)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from facetrain.eval.roc import ROC, far_key  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_roc(curve: ROC, path: Path, title: str, fars: Sequence[float], auc: float) -> Path:
    """TAR against FAR (log axis from the smallest of ``fars``), as insightface's IJB script draws it."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    shown = curve.fpr > 0
    ax.plot(curve.fpr[shown], curve.tpr[shown], lw=1.5, label=f"AUC = {100 * auc:.2f}%")
    ax.set_xscale("log")
    ax.set_xlim(min(fars), 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(list(fars) + [1.0], [far_key(f) for f in fars] + ["1"])
    ax.grid(linestyle="--", linewidth=0.5)
    ax.set_xlabel("False accept rate")
    ax.set_ylabel("True accept rate")
    ax.set_title(f"ROC on {title}")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_score_histograms(scores: np.ndarray, labels: np.ndarray, path: Path, title: str, bins: int = 200) -> Path:
    """Density histograms of the cosine scores of positive and negative pairs on one axis."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for kind, chosen, colour in (("negative", ~labels, "tab:red"), ("positive", labels, "tab:blue")):
        ax.hist(scores[chosen], bins=edges, density=True, alpha=0.5, color=colour,
                label=f"{kind} pairs ({int(chosen.sum())})")
    ax.set_xlabel("Cosine similarity")
    ax.set_ylabel("Density")
    ax.set_title(f"Score distributions on {title}")
    ax.legend(loc="upper left")
    return _save(fig, path)
