"""CurricularFace: ArcFace's target with hard negatives re-weighted as training matures."""
from __future__ import annotations

import torch

from facetrain.heads.base import MarginHead
from facetrain.parallel.collectives import gather_batch
from facetrain.heads.margin import arc_margin
from facetrain.heads.registry import HEADS


@HEADS.register("curricularface")
class CurricularFace(MarginHead):
    """CurricularFace (Huang et al., CVPR 2020).

    Target ``s * cos(theta_y + m)`` (with insightface's fallback past ``pi - m``, as the official code).
    A negative ``j`` is hard when ``cos(theta_j) > cos(theta_y + m)``; its logit becomes
    ``s * cos(theta_j) * (t + cos(theta_j))``. ``t`` (a buffer, starting at 0) follows the mean target
    cosine: ``t <- t_alpha * mean(cos theta_y) + (1 - t_alpha) * t``, updated before use in every training
    forward; ``t_alpha = 0.01`` as in the official code (the paper's momentum 0.99). Under DDP the mean
    is over the global batch, so ``t`` is the same on every rank.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 t_alpha: float = 0.01) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.m, self.t_alpha = m, t_alpha
        self.register_buffer("t", torch.zeros(()))

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return arc_margin(cos_target, self.m, "fallback")

    def other_logits(self, scores: torch.Tensor, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.training:
                self.t.lerp_(gather_batch(score_target).mean(), self.t_alpha)
            hard = scores > arc_margin(score_target, self.m, "plain")
            t = self.t.clone()  # the graph keeps this copy, not the buffer the next step updates in place
        return self.s * torch.where(hard, scores * (t + scores), scores)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, t_alpha={self.t_alpha}"
