"""Evaluation-oriented knowledge distillation (EKD, Huang et al., CVPR'22), as TFace's ``recognition/tasks/ekd``
computes it: the student keeps the teacher's *rank* of each pair among the negative pairs, measured at the
similarity thresholds where face recognition is evaluated (FPR 1e-1 ... 1e-6).

On the global batch (the L2-normalised embeddings of every rank), the cosine of each pair ``i < j`` is a positive
pair (same label) or a negative one. Each model keeps anchors ``a_k``: the similarity of its own negative pairs
at FPR ``f_k`` (the ``floor(n / (1/f_k))``-th of the ``n`` negatives sorted descending), as an EMA (momentum 0.01,
from 0). A pair's soft rank count is ``c(s) = sum_k sigmoid((s - a_k) / T)`` (T = 0.01; the argument clamped to
[-50, 50]), with the student's anchors for the student's cosine and the teacher's for the teacher's. The loss is
``0.02 * MSE(c_S, c_T)`` over the positive pairs plus ``0.01 * MSE(c_S, c_T)`` over the 2000 negative pairs the
student finds most similar. The anchors are updated before the loss of the batch is computed, as TFace does.

Degenerate batches, where TFace fails: no positive pair adds 0 (TFace: NaN), no negative pair leaves the anchors
as they are and adds 0 (TFace: an index error).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from facetrain.distill.losses import DISTILL_LOSSES, DistillBatch, DistillLoss
from facetrain.errors import ConfigError
from facetrain.parallel.collectives import gather_batch, gather_with_grad

CLAMP = 50.0  # TFace's clamp of the sigmoid's argument


def pair_similarities(embeddings: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` cosines of the pairs ``i < j`` of the L2-normalised rows, row by row."""
    unit = F.normalize(embeddings)
    upper = torch.ones_like(same).triu(1)
    cosines = (unit @ unit.t())[upper]
    pair_same = same[upper]
    return cosines[pair_same], cosines[~pair_same]


def rank_counts(similarities: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """``c(s) = sum_k sigmoid((s - a_k) / T)`` of every similarity, ``[P]``."""
    z = ((similarities.unsqueeze(1) - anchors.unsqueeze(0)) / temperature).clamp(-CLAMP, CLAMP)
    return torch.sigmoid(z).sum(dim=1)


@DISTILL_LOSSES.register("ekd")
class EvaluationOrientedLoss(DistillLoss):
    """EKD over the global batch (see the module docstring); the anchors are persistent buffers, so a resumed run
    continues with the anchors it had."""

    projects = False  # compares similarities within each model: any embedding sizes

    def __init__(self, student_size: int, teacher_size: int, fprs: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
                 momentum: float = 0.01, temperature: float = 0.01, top_k: int = 2000, positive_weight: float = 0.02,
                 negative_weight: float = 0.01) -> None:
        super().__init__(student_size, teacher_size)
        if not fprs or any(not 0 < f <= 1 for f in fprs):
            raise ConfigError(f"distill.fprs={list(fprs)} must be false positive rates in (0, 1]",
                              "set distill.fprs, e.g. [0.1, 0.01, 0.001, 0.0001, 0.00001, 0.000001]")
        # TFace's anchors: the negatives' count divided by these integers indexes the sorted negatives
        self.per_false_positive = [round(1 / f) for f in fprs]
        self.momentum, self.temperature, self.top_k = momentum, temperature, top_k
        self.positive_weight, self.negative_weight = positive_weight, negative_weight
        self.register_buffer("student_anchors", torch.zeros(len(fprs)))
        self.register_buffer("teacher_anchors", torch.zeros(len(fprs)))

    def term(self, batch: DistillBatch) -> torch.Tensor:
        student = gather_with_grad(batch.student)
        teacher, labels = gather_batch(batch.teacher), gather_batch(batch.labels)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        student_pos, student_neg = pair_similarities(student, same)
        with torch.no_grad():
            teacher_pos, teacher_neg = pair_similarities(teacher, same)
        hardest = student_neg.detach().argsort(descending=True, stable=True)
        if len(student_neg):
            self._update_anchors(student_neg.detach()[hardest], teacher_neg.sort(descending=True).values)
        hardest = hardest[:self.top_k]
        return (self.positive_weight * self._rank_loss(student_pos, teacher_pos)
                + self.negative_weight * self._rank_loss(student_neg[hardest], teacher_neg[hardest]))

    @torch.no_grad()
    def _update_anchors(self, student_sorted: torch.Tensor, teacher_sorted: torch.Tensor) -> None:
        last = len(student_sorted) - 1  # FPR 1: the least similar negative
        at = torch.tensor([min(len(student_sorted) // n, last) for n in self.per_false_positive], device=student_sorted.device)
        for anchors, ranked in ((self.student_anchors, student_sorted), (self.teacher_anchors, teacher_sorted)):
            anchors.copy_(self.momentum * ranked[at] + (1 - self.momentum) * anchors)  # TFace's order of terms

    def _rank_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """MSE of the soft rank counts of the student's and the teacher's similarities of the same pairs."""
        if len(student) == 0:
            return student.sum()  # 0, still part of the graph
        return F.mse_loss(rank_counts(student, self.student_anchors, self.temperature),
                          rank_counts(teacher, self.teacher_anchors, self.temperature))
