"""Relational knowledge distillation (Park et al., CVPR'19): the student keeps the teacher's distances and
angles between the samples of a batch, so the two embeddings may differ in size (no projection)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from facetrain.distill.losses import DISTILL_LOSSES, DistillBatch, DistillLoss
from facetrain.errors import ConfigError


def distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[N, N]`` between the rows of ``x``, 0 on the diagonal."""
    squared = x.pow(2).sum(dim=1)
    d2 = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2.0 * x @ x.t()).clamp(min=1e-12)
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return d2.sqrt() * off_diagonal


def normalised_distances(x: torch.Tensor) -> torch.Tensor:
    """:func:`distances` divided by their mean over the pairs of distinct samples (RKD's ``psi_D``)."""
    d = distances(x)
    return d / d[d > 0].mean()


def angles(x: torch.Tensor) -> torch.Tensor:
    """``cos`` of the angle at ``x_a`` between ``x_b - x_a`` and ``x_c - x_a`` for every triple, ``[N^3]``
    (RKD's ``psi_A``; 0 where a difference is 0)."""
    directions = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)  # [a, b] = unit(x_b - x_a)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


@DISTILL_LOSSES.register("rkd")
class RelationalLoss(DistillLoss):
    """``distance_weight * smoothL1(psi_D(s), psi_D(t)) + angle_weight * smoothL1(psi_A(s), psi_A(t))`` on the
    L2-normalised embeddings (RKD-DA; 25 and 50 as the paper weighs them beside cross-entropy)."""

    projects = False

    def __init__(self, student_size: int, teacher_size: int, distance_weight: float = 25.0,
                 angle_weight: float = 50.0) -> None:
        super().__init__(student_size, teacher_size)
        if distance_weight < 0 or angle_weight < 0 or distance_weight + angle_weight == 0:
            raise ConfigError(f"distill.distance_weight={distance_weight} and distill.angle_weight={angle_weight}",
                              "give both weights >= 0 and at least one > 0 (RKD: 25 and 50)")
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def term(self, batch: DistillBatch) -> torch.Tensor:
        student, teacher = F.normalize(batch.student), F.normalize(batch.teacher)
        loss = student.new_zeros(())
        if self.distance_weight:
            loss = loss + self.distance_weight * F.smooth_l1_loss(normalised_distances(student),
                                                                  normalised_distances(teacher))
        if self.angle_weight:
            loss = loss + self.angle_weight * F.smooth_l1_loss(angles(student), angles(teacher))
        return loss
