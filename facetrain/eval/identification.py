"""1:N identification: probes searched in a gallery of enrolled identities, by cosine similarity.

Closed set (the CMC): among the probes whose identity is enrolled (*mated* probes), the fraction whose
best-scoring gallery entry of their own identity ranks within the top k. A probe's rank is 1 + the number of
gallery entries of *other* identities that score at least as high as its best mate (ties count against it,
so the figures never depend on the order of the gallery).

Open set (NIST's TPIR at FPIR): a threshold t is set on the non-mated probes' top scores so that a fraction
FPIR of them (rounded down to whole probes) scores t or more; TPIR is the fraction of mated probes whose mate
ranks first and scores at least t. With no non-mated probe there is no open-set figure.

:func:`insightface_figures` are the figures the field reports for IJB-B/C, as insightface's
``recognition/_evaluation_/ijb/ijb_1n.py`` computes them on one gallery holding every probe's identity: its
ranks take ties in the order numpy's argsort leaves them, and its open-set figure is another one.

Everything is vectorised: the similarity matrix is taken in blocks of probes (on the device in :func:`search`,
in numpy in :func:`insightface_figures`, as insightface's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

RANKS = (1, 5, 10, 20)
FPIRS = (0.01, 0.1)


@dataclass
class SearchResult:
    """Per probe: whether it is mated, the rank of its best mate (0 when not mated), the best mate's score
    (NaN when not mated), and its top score over the whole gallery."""

    mated: np.ndarray
    rank: np.ndarray
    mate_score: np.ndarray
    top_score: np.ndarray


def search(probe_feats: np.ndarray | torch.Tensor, probe_ids: np.ndarray, gallery_feats: np.ndarray | torch.Tensor,
           gallery_ids: np.ndarray, device: Optional[torch.device | str] = None, block: int = 4096) -> SearchResult:
    """Score every probe against every gallery entry (cosine of L2-normalised features, float64), on
    ``device`` (default: the probe tensor's, else the CPU)."""
    if device is None:
        device = probe_feats.device if torch.is_tensor(probe_feats) else "cpu"
    probes = F.normalize(torch.as_tensor(probe_feats, dtype=torch.float64, device=device), dim=1)
    gallery = F.normalize(torch.as_tensor(gallery_feats, dtype=torch.float64, device=device), dim=1)
    _, codes = np.unique(np.concatenate([np.asarray(probe_ids), np.asarray(gallery_ids)]), return_inverse=True)
    probe_codes = torch.from_numpy(codes[: len(probe_ids)]).to(device)
    gallery_codes = torch.from_numpy(codes[len(probe_ids):]).to(device)
    mated, rank, mate_score, top = [], [], [], []
    for start in range(0, len(probes), block):
        scores = probes[start:start + block] @ gallery.T
        same = probe_codes[start:start + block, None] == gallery_codes[None, :]
        best_mate = torch.where(same, scores, torch.full_like(scores, -math.inf)).amax(dim=1)
        has_mate = same.any(dim=1)
        beaten = ((scores >= best_mate[:, None]) & ~same).sum(dim=1)
        mated.append(has_mate)
        rank.append(torch.where(has_mate, beaten + 1, torch.zeros_like(beaten)))
        mate_score.append(torch.where(has_mate, best_mate, torch.full_like(best_mate, math.nan)))
        top.append(scores.amax(dim=1))
    return SearchResult(*(torch.cat(part).cpu().numpy() for part in (mated, rank, mate_score, top)))


def cmc(result: SearchResult, max_rank: int) -> np.ndarray:
    """The identification rate at ranks 1 .. ``max_rank`` over the mated probes (NaN without any)."""
    ranks = result.rank[result.mated]
    if len(ranks) == 0:
        return np.full(max_rank, np.nan)
    return np.array([(ranks <= k).mean() for k in range(1, max_rank + 1)])


def tpir_at_fpir(result: SearchResult, fpir: float) -> Optional[tuple[float, float]]:
    """``(TPIR, threshold)`` at ``fpir``, or None without non-mated probes."""
    non_mated = np.sort(result.top_score[~result.mated])[::-1]
    if len(non_mated) == 0:
        return None
    allowed = int(math.floor(fpir * len(non_mated)))  # false alarms allowed
    # the smallest threshold at which at most `allowed` non-mated probes score at or above it
    threshold = np.nextafter(non_mated[allowed], np.inf) if allowed < len(non_mated) else -np.inf
    hits = result.mated & (result.rank == 1) & (result.mate_score >= threshold)
    return float(hits.sum() / max(result.mated.sum(), 1)), float(threshold)


def identification_metrics(result: SearchResult, ranks: Sequence[int] = RANKS,
                           fpirs: Sequence[float] = FPIRS) -> dict[str, Any]:
    """Rank-k identification rates and TPIR at FPIR, with the probe counts behind them."""
    curve = cmc(result, max(ranks))
    open_set = {f"{fpir:g}": tpir_at_fpir(result, fpir) for fpir in fpirs}
    return {
        "probes": int(len(result.mated)), "mated_probes": int(result.mated.sum()),
        "rank": {str(k): None if np.isnan(curve[k - 1]) else float(curve[k - 1]) for k in ranks},
        "tpir_at_fpir": {key: None if value is None else value[0] for key, value in open_set.items()},
    }


def enrol_mean(features: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One gallery entry per identity: the mean of its L2-normalised features; ``(features, identities)``."""
    unique, index = np.unique(identities, return_inverse=True)
    normalised = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((len(unique), features.shape[1]))
    np.add.at(sums, index, normalised)
    return sums / np.bincount(index)[:, None], unique


def metrics_table(title: str, named: dict[str, dict[str, Any]], label: str = "") -> str:
    """Rank-k rates and TPIR at FPIR (%) of each named :func:`identification_metrics` result, one row each
    (``label`` heads the names' column)."""
    first = next(iter(named.values()))
    ranks, fpirs = list(first["rank"]), list(first["tpir_at_fpir"])
    rows = [(label, *(f"rank-{k}" for k in ranks), *(f"TPIR@FPIR={f}" for f in fpirs))]
    for name, metrics in named.items():
        values = [metrics["rank"][k] for k in ranks] + [metrics["tpir_at_fpir"][f] for f in fpirs]
        rows.append((name, *("-" if v is None else f"{100 * v:.2f}" for v in values)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{row[0]:<{widths[0]}}  " + "  ".join(cell.rjust(w) for cell, w in zip(row[1:], widths[1:])) for row in rows]
    return "\n".join([title] + [line.rstrip() for line in lines])


def insightface_figures(probe_feats: np.ndarray | torch.Tensor, gallery_feats: np.ndarray | torch.Tensor,
                        mate_index: np.ndarray, ranks: Sequence[int] = (1, 5, 10), fprs: Sequence[float] = FPIRS,
                        block: int = 4096) -> dict[str, dict[str, float]]:
    """``evaluation()`` of insightface's ijb_1n.py, where every probe has exactly one mate in the gallery
    (``mate_index``): ``{"rank": {k: ...}, "tpir_at_fpir": {f: ...}}``.

    Rank k is the fraction of probes whose mate is among the first k entries of ``numpy.argsort(-similarity)``
    (numpy's default sort), so a non-mate scoring exactly as the mate may come before or after it: the
    gallery's order and numpy's sort decide, as in insightface's code (unlike :func:`search`, where such a
    tie counts against the probe). The "TPIR" at FPR f thresholds at the ``ceil(f * probes)``-th largest
    non-mate similarity over all probe-gallery pairs and counts the probes whose mate scores above it.

    ``probe_feats`` and ``gallery_feats`` are used as given (insightface's are L2-normalised before): the
    similarities are their float64 product by ``numpy.dot`` in one call, as insightface's (a product taken in
    blocks can differ in the last bit); rows are then taken in blocks, only rows in which a non-mate ties the
    mate are sorted, and only the largest non-mate scores are kept."""
    probes, gallery = _float64_rows(probe_feats), _float64_rows(gallery_feats)
    similarity, mates = np.dot(probes, gallery.T), np.asarray(mate_index)
    need = max(int(math.ceil(len(probes) * fpr)) for fpr in fprs)
    positions, mate_scores, largest = [], [], np.empty(0)
    for start in range(0, len(probes), block):
        scores = similarity[start:start + block]
        rows, own = np.arange(len(scores)), mates[start:start + block]
        mate = scores[rows, own]
        position = (scores > mate[:, None]).sum(axis=1)  # exact wherever no non-mate ties the mate
        tied = np.flatnonzero(((scores == mate[:, None]).sum(axis=1) > 1) & (position < max(ranks)))
        position[tied] = np.argmax(np.argsort(-scores[tied], axis=1) == own[tied, None], axis=1)
        positions.append(position)
        mate_scores.append(mate)
        scores[rows, own] = -np.inf
        flat = np.concatenate([largest, scores.ravel()])
        largest = -np.partition(-flat, min(need, len(flat)) - 1)[:need]
    position, mate, largest = np.concatenate(positions), np.concatenate(mate_scores), np.sort(largest)[::-1]
    thresholds = {f"{fpr:g}": largest[int(math.ceil(len(probes) * fpr)) - 1] for fpr in fprs}
    return {"rank": {str(k): float((position < k).mean()) for k in ranks},
            "tpir_at_fpir": {key: float((mate > threshold).mean()) for key, threshold in thresholds.items()}}


def _float64_rows(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """``features`` as a float64 numpy array on the CPU."""
    return (features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)).astype(np.float64)
