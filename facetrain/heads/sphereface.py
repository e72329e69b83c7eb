"""SphereFace / A-Softmax: a multiplicative angular margin on unnormalised features."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from facetrain.heads.base import Head
from facetrain.heads.registry import HEADS


def chebyshev(cos: torch.Tensor, m: int) -> torch.Tensor:
    """``cos(m * theta)`` as the Chebyshev polynomial ``T_m(cos theta)`` (smooth at cos = +-1)."""
    previous, current = torch.ones_like(cos), cos
    for _ in range(m - 1):
        previous, current = current, 2.0 * cos * current - previous
    return current if m > 0 else previous


def psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """``(-1)^k cos(m theta) - 2k`` with ``k = floor(m theta / pi)``: decreasing on [0, pi], equal to
    ``cos(m theta)`` on [0, pi/m]."""
    with torch.no_grad():
        k = torch.floor(m * torch.acos(cos) / math.pi).clamp(0, m - 1)
    return (1.0 - 2.0 * torch.remainder(k, 2)) * chebyshev(cos, m) - 2.0 * k


@HEADS.register("sphereface")
class SphereFace(Head):
    """SphereFace / A-Softmax (Liu et al., CVPR 2017). Class centres normalised, features not, no scale.

    Logits ``||x|| cos(theta_j)``; target ``||x|| (lambda cos(theta) + psi(theta)) / (1 + lambda)`` with
    ``lambda = max(lambda_min, base * (1 + gamma * it)^-power)``. ``it`` is the number of the optimizer
    step being trained (1 for the first; the official Caffe layer increments its counter before use, once
    per iteration): the buffer ``iteration`` counts the finished optimizer steps
    (:meth:`on_optimizer_step`), so every micro-batch of one step under ``trainer.grad_accum`` sees the
    same lambda. Outside training, lambda is the last step's. Defaults are the official prototxt's (m=4,
    base=1000, gamma=0.12, power=1, lambda_min=5). Differs from the official code in one respect:
    gradients are autograd's exact ones, where the Caffe layer hand-writes a rescaled backward.

    ``it`` counts optimizer steps of the run's global batch, like the step counter and the lr schedule: a
    resume with another global batch re-expresses it as it does them (:meth:`re_express_steps`), so the
    annealing goes on from the same place in the data as a run with the new batch from the start would
    there. lambda is defined per step, so at that resume it moves to that run's value (a larger batch: a
    larger lambda, annealed more slowly per image) rather than continuing the old batch's curve.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, m: int = 4, base: float = 1000.0, gamma: float = 0.12,
        power: float = 1.0, lambda_min: float = 5.0,
    ) -> None:
        super().__init__(embedding_size, num_classes)
        if m < 1:
            raise ValueError(f"SphereFace margin m must be a positive integer, got {m}")
        self.m, self.base, self.gamma, self.power, self.lambda_min = m, base, gamma, power, lambda_min
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def annealing(self, it: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``lambda`` at step ``it`` (default: the last finished step), a tensor: no host sync."""
        it = (self.iteration if it is None else it).to(torch.float64)
        return (self.base * (1.0 + self.gamma * it) ** -self.power).clamp_min(self.lambda_min)

    def on_optimizer_step(self) -> None:
        self.iteration += 1

    def re_express_steps(self, re_express: Callable[[int], int]) -> None:
        self.iteration.fill_(re_express(int(self.iteration)))

    def stats(self) -> dict[str, torch.Tensor]:
        return {"lambda": self.annealing()}

    def scores(self, embeddings: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.linear(F.normalize(embeddings), F.normalize(self.class_rows(self.weight, classes))).clamp(-1.0, 1.0)

    def target_logit(self, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        lam = self.annealing(self.iteration + 1 if self.training else None).to(score_target.dtype)
        target = (lam * score_target + psi(score_target, self.m)) / (1.0 + lam)
        return embeddings.norm(dim=1, keepdim=True) * target

    def other_logits(self, scores: torch.Tensor, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.norm(dim=1, keepdim=True) * scores

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, m={self.m}, base={self.base}, "
                f"gamma={self.gamma}, power={self.power}, lambda_min={self.lambda_min}")
