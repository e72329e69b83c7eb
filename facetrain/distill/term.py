"""The distillation term a model adds to its head's loss: ``weight * loss(student, teacher(batch))``.

:class:`Distillation` is what the training loop is handed (as one of :class:`facetrain.engine.model.FaceModel`'s
extra loss terms): a module holding the loss (its projection and state are trained and checkpointed with the
student) beside a teacher that is not a submodule. Its ``state_dict`` names the teacher (file, sha256) and the loss,
so a resume with another teacher file or another loss is refused in one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from facetrain.distill.losses import DISTILL_LOSSES, DistillLoss
from facetrain.distill.teachers import Teacher, load_teacher
from facetrain.errors import ConfigError, ResumeError


class Distillation(nn.Module):
    """``forward(images, embeddings, logits, labels, indices)`` -> the un-weighted distillation loss; the model
    adds ``weight`` times it to the head's loss."""

    def __init__(self, name: str, teacher: Teacher, loss: DistillLoss, weight: float) -> None:
        super().__init__()
        self.name, self.loss, self.weight = name, loss, weight
        self.teacher = teacher  # a plain object: no submodule, no state_dict entry, no DDP, no optimizer

    def forward(self, images: torch.Tensor, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                indices: Optional[torch.Tensor]) -> torch.Tensor:
        taught = self.teacher(images, labels, indices)
        return self.loss(embeddings, taught.embeddings, labels, logits, taught.logits)

    def get_extra_state(self) -> dict[str, Any]:
        return {"loss": self.name, "teacher": str(self.teacher.file), "sha256": self.teacher.sha256}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state["loss"] != self.name:
            raise ResumeError(f"the run was distilled with distill={state['loss']}, not distill={self.name}",
                              f"resume with distill={state['loss']}, or start a fresh run")
        if state["sha256"] != self.teacher.sha256:
            raise ResumeError(f"the run was distilled from {state['teacher']} (sha256 {state['sha256'][:12]}), but "
                              f"distill.teacher={self.teacher.file} is another file (sha256 {self.teacher.sha256[:12]})",
                              "resume with the teacher the run started with, or start a fresh run")

    def extra_repr(self) -> str:
        return f"{self.name} x {self.weight:g}, teacher {self.teacher.file}"


def build_distillation(name: str, teacher: str | Path, weight: float, student_size: int, device: torch.device,
                       dataset_size: int, num_classes: int, channels_last: bool = False,
                       sharded_head: bool = False, **keys: Any) -> Distillation:
    """The term of ``distill=<name>`` with ``keys`` from its YAML file, its teacher loaded on ``device``."""
    loss_class = DISTILL_LOSSES.get(name)
    if loss_class.needs_teacher_logits and sharded_head:
        raise ConfigError(f"distill={name} compares the heads' logits, but this run splits the head's classes over "
                          "ranks (each holds only its own columns)", "set head.parallel=data (and head.sample_rate=1.0)")
    with torch.random.fork_rng(devices=[]):  # building a teacher network draws weights: the student's draws stay as they are
        loaded = load_teacher(teacher, device, dataset_size, channels_last,
                              num_classes if loss_class.needs_teacher_logits else None)
    loss = loss_class(student_size, loaded.embedding_size, **keys).to(device)
    return Distillation(name, loaded, loss, weight)
