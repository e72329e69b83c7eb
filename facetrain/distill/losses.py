"""Distillation losses: a registry keyed by ``configs/distill/<name>.yaml``'s ``name``, like the heads.

The contract (:class:`DistillLoss`), for every loss including ``ekd`` (:mod:`facetrain.distill.ekd`):

- ``__init__(self, student_size: int, teacher_size: int, **keys)``: the embedding sizes and the YAML file's
  loss-specific keys (``distill.name``, ``distill.teacher`` and ``distill.weight`` are not passed). Call
  ``super().__init__(student_size, teacher_size)``, which adds the learned projection when needed.
- ``term(batch: DistillBatch) -> Tensor``: the un-weighted loss, a 0-dim fp32 tensor (the model adds
  ``distill.weight * term`` to the head's loss and logs it as ``train/distill_loss``). ``batch.student``
  ``[N, D_t]`` carries the gradient, already projected to the teacher's size for losses with
  ``projects = True``; ``batch.teacher`` ``[N, D_t]`` is detached; both are raw (un-normalised) embeddings
  in fp32, autocast off. ``batch.labels`` ``[N]``; the logits are the student head's (margins and scale
  applied) and the teacher's head's (None when the teacher has none).
- Every rank calls ``term`` on its own batch. A loss over the global batch gathers with
  :func:`facetrain.parallel.collectives.gather_with_grad` (the student, whose gradient returns to each rank)
  and :func:`~facetrain.parallel.collectives.gather_batch` (the teacher, labels) on the default process group.
- State that must survive a restart (EKD's EMA anchors) lives in persistent buffers: the checkpoint carries
  the loss's ``state_dict`` (the projection too), so a resumed run continues bit for bit.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from facetrain.precision import at_least_fp32, no_autocast
from facetrain.registry import Registry

DISTILL_LOSSES: Registry = Registry("distillation loss")


@dataclass
class DistillBatch:
    """What a distillation loss sees of one (micro-)batch."""

    student: torch.Tensor  # [N, D_t] raw student embeddings (projected when the loss projects), with gradient
    teacher: torch.Tensor  # [N, D_t] raw teacher embeddings, detached
    labels: torch.Tensor  # [N]
    student_logits: torch.Tensor  # [N, C] what the student head's cross-entropy sees
    teacher_logits: Optional[torch.Tensor] = None  # [N, C] the teacher head's, when the teacher has one


class DistillLoss(nn.Module, ABC):
    """Base class of the distillation losses (the contract is in this module's docstring)."""

    projects = True  # compares embeddings coordinate by coordinate: needs one size (relational losses: False)
    needs_teacher_logits = False  # True: the teacher must bring a head for the student's classes

    def __init__(self, student_size: int, teacher_size: int) -> None:
        super().__init__()
        self.student_size, self.teacher_size = student_size, teacher_size
        # a learned map from the student's embedding to the teacher's, trained with the student (in the checkpoint)
        self.projection = (nn.Linear(student_size, teacher_size, bias=False)
                           if self.projects and student_size != teacher_size else None)

    @abstractmethod
    def term(self, batch: DistillBatch) -> torch.Tensor:
        """The un-weighted loss of ``batch``: a 0-dim fp32 tensor."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, student_logits: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        with no_autocast(student):
            student = at_least_fp32(student)
            if self.projection is not None:
                student = self.projection(student)
            teacher = at_least_fp32(teacher.detach())
            teacher_logits = None if teacher_logits is None else at_least_fp32(teacher_logits.detach())
            return self.term(DistillBatch(student, teacher, labels, at_least_fp32(student_logits), teacher_logits))


def build_distill_loss(name: str, student_size: int, teacher_size: int, **keys: Any) -> DistillLoss:
    """The loss registered as ``name`` for these embedding sizes, with its YAML file's keys."""
    return DISTILL_LOSSES.get(name)(student_size, teacher_size, **keys)
