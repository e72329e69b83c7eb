"""Evaluation figures as PNG: the ROC curve on a log FAR axis, the score histograms of positive and negative
pairs (the X2-Softmax paper's figure 7), and for identification the CMC and the TPIR-FPIR curve."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from facetrain.eval.roc import ROC, far_key  # noqa: E402


def _save(fig: plt.Figure, path: Path, labels: tuple[str, str, str], legend: str = "lower right") -> Path:
    """Label ``fig``'s axis (x, y, title), add a dashed grid and the legend, write it to ``path`` as PNG and
    free it."""
    ax = fig.axes[0]
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2])
    ax.grid(linestyle="--", linewidth=0.5)
    ax.legend(loc=legend)
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
    return _save(fig, path, ("False accept rate", "True accept rate", f"ROC on {title}"))


def plot_score_histograms(scores: np.ndarray, labels: np.ndarray, path: Path, title: str, bins: int = 200) -> Path:
    """Density histograms of the cosine scores of positive and negative pairs on one axis."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for kind, chosen, colour in (("negative", ~labels, "tab:red"), ("positive", labels, "tab:blue")):
        ax.hist(scores[chosen], bins=edges, density=True, alpha=0.5, color=colour,
                label=f"{kind} pairs ({int(chosen.sum())})")
    return _save(fig, path, ("Cosine similarity", "Density", f"Score distributions on {title}"), "upper left")


def plot_cmc(results: dict, path: Path, title: str, max_rank: int = 20) -> Path:
    """The identification rate against the rank (CMC), one curve per gallery (:class:`SearchResult` each)."""
    from facetrain.eval.identification import cmc

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ranks = np.arange(1, max_rank + 1)
    for name, result in results.items():
        ax.plot(ranks, cmc(result, max_rank), marker=".", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path, ("Rank", "Identification rate", f"CMC on {title}"))


def plot_tpir(results: dict, path: Path, title: str) -> Path:
    """TPIR against FPIR (log axis), one curve per gallery with non-mated probes: the open-set trade-off."""
    from facetrain.eval.identification import tpir_at_fpir

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, result in results.items():
        non_mated = int((~result.mated).sum())
        if non_mated == 0:
            continue
        fpirs = np.logspace(np.log10(max(1.0 / non_mated, 1e-4)), 0, 60)
        ax.plot(fpirs, [tpir_at_fpir(result, f)[0] for f in fpirs], label=name)
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.0)
    return _save(fig, path, ("False positive identification rate", "True positive identification rate",
                             f"Open-set identification on {title}"))
