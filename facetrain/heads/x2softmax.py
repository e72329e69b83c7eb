"""X2-Softmax: a quadratic target logit in the angle, so the margin grows with the angle between classes."""
from __future__ import annotations

import torch

from facetrain.heads.base import MarginHead
from facetrain.heads.margin import angle, straight_through
from facetrain.heads.registry import HEADS


@HEADS.register("x2softmax")
class X2Softmax(MarginHead):
    """X2-Softmax (Xu et al., 2023): target ``s * (a * (theta - h)^2 + k)``, non-targets ``s * cos(theta)``.

    ``theta`` comes from the clamped cosine (the official code takes arccos of the raw cosine, which is
    NaN once rounding pushes it past 1). ``straight_through=False`` (default): the gradient of the formula,
    as the paper writes it. ``straight_through=True``: the official code's gradient: it writes the target
    into the cosine matrix under ``no_grad``, so the target logit has the value above but the gradient of
    ``s * cos(theta)``.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, a: float = -0.9, h: float = 0.0, k: float = 0.65,
        straight_through: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.a, self.h, self.k, self.straight_through = a, h, k, straight_through

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        target = self.a * (angle(cos_target) - self.h) ** 2 + self.k
        return straight_through(target, cos_target) if self.straight_through else target

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, a={self.a}, h={self.h}, k={self.k}, straight_through={self.straight_through}"
