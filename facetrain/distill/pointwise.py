"""Losses that compare each sample's student output with its teacher's: ``feature``, ``mse`` and ``kl``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from facetrain.distill.losses import DISTILL_LOSSES, DistillBatch, DistillLoss
from facetrain.errors import ConfigError


@DISTILL_LOSSES.register("feature")
class FeatureLoss(DistillLoss):
    """``mean_i (1 - cos(s_i, t_i))``: the student's embedding turns towards the teacher's."""

    def term(self, batch: DistillBatch) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(batch.student, batch.teacher, dim=1)).mean()


@DISTILL_LOSSES.register("mse")
class FeatureMSELoss(DistillLoss):
    """``alpha * mean_{i,d} (s_id - t_id)^2`` of the L2-normalised embeddings (FitNet's mean squared error on
    the embedding; ``alpha = D`` makes it ``mean_i ||s_i - t_i||^2 = 2 mean_i (1 - cos)``)."""

    def __init__(self, student_size: int, teacher_size: int, alpha: float) -> None:
        super().__init__(student_size, teacher_size)
        if alpha <= 0:
            raise ConfigError(f"distill.alpha={alpha} must be > 0", "set distill.alpha to a positive scale, e.g. 1.0")
        self.alpha = alpha

    def term(self, batch: DistillBatch) -> torch.Tensor:
        return self.alpha * F.mse_loss(F.normalize(batch.student), F.normalize(batch.teacher))


@DISTILL_LOSSES.register("kl")
class SoftTargetLoss(DistillLoss):
    """Hinton's soft targets: ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` per sample, averaged over the
    batch, on the logits each head's cross-entropy sees. Needs a teacher with a head for the same classes."""

    projects = False  # compares logits, not embeddings
    needs_teacher_logits = True

    def __init__(self, student_size: int, teacher_size: int, temperature: float = 4.0) -> None:
        super().__init__(student_size, teacher_size)
        if temperature <= 0:
            raise ConfigError(f"distill.temperature={temperature} must be > 0", "set distill.temperature, e.g. 4.0")
        self.temperature = temperature

    def term(self, batch: DistillBatch) -> torch.Tensor:
        if batch.teacher_logits is None:
            raise ConfigError("distill=kl needs the teacher's logits, but this teacher has no head",
                              "use a facetrain checkpoint (with its head) as distill.teacher, or distill=feature")
        t = self.temperature
        log_student = F.log_softmax(batch.student_logits / t, dim=1)
        log_teacher = F.log_softmax(batch.teacher_logits / t, dim=1)
        return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * t * t
