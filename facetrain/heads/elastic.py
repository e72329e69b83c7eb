"""ElasticFace: margins drawn from a normal distribution for every sample and step."""
from __future__ import annotations

from typing import Optional, Union

import torch

from facetrain.heads.base import MarginHead
from facetrain.heads.margin import arc_margin, check_choice
from facetrain.heads.registry import HEADS

KINDS = {"arc": 0.5, "cos": 0.35}  # kind -> default mean margin (the paper's)
SIGMA = 0.05  # default standard deviation of the margin
PLUS_SIGMA = {"arc": 0.0175, "cos": 0.02}  # ElasticFace+: the official config's, by kind
ASSIGNMENTS = ("paper", "official")


@HEADS.register("elasticface")
class ElasticFace(MarginHead):
    """ElasticFace (Boutros et al., CVPRW 2022): each training sample's margin ``m_i ~ N(m, sigma)``, drawn
    anew every step. ``kind=arc``: target ``s * cos(theta + m_i)`` (no fallback, as paper and code);
    ``kind=cos``: ``s * (cos(theta) - m_i)``. ``m`` defaults to 0.5 (arc) or 0.35 (cos), ``sigma`` to
    0.05, or with ``plus`` to 0.0175 (arc) and 0.02 (cos), as the official ``config/config.py`` sets them
    for ElasticArcFacePlus and ElasticCosFacePlus (fdbtrs/ElasticFace 5496ec06). Outside training the
    margin is ``m`` itself, so evaluation is deterministic.

    ``plus`` (ElasticFace+): the batch's drawn margins are sorted and handed out by ``cos(theta_y)``.
    ``plus_assignment=paper`` (default): the sample closest to its class centre (largest ``cos``) gets
    the smallest margin, the farthest the largest. ``plus_assignment=official``: the official code's
    ``margin[argsort(cos, descending)]``, which indexes the sorted margins *by* the ranking instead of
    scattering them *to* it, so a sample's margin is not its rank's (the two agree only when the
    ranking is its own inverse). Under DDP each rank sorts its own batch, as the official code.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: Optional[float] = None, sigma: Optional[float] = None,
        kind: str = "arc", plus: bool = False, plus_assignment: str = "paper",
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.kind = check_choice(kind, tuple(KINDS), "ElasticFace kind")
        self.plus_assignment = check_choice(plus_assignment, ASSIGNMENTS, "ElasticFace plus_assignment")
        self.m = KINDS[kind] if m is None else m
        self.sigma = (PLUS_SIGMA[kind] if plus else SIGMA) if sigma is None else sigma
        self.plus = plus

    @torch.no_grad()
    def margins(self, cos_target: torch.Tensor) -> Union[float, torch.Tensor]:
        """Per-sample margins ``[N, 1]`` when training, else the mean ``m``."""
        if not self.training:
            return self.m
        drawn = torch.normal(self.m, self.sigma, cos_target.shape, dtype=cos_target.dtype, device=cos_target.device)
        if not self.plus:
            return drawn
        ascending = drawn.flatten().sort().values
        ranking = cos_target.flatten().argsort(descending=True)  # closest to its centre first
        if self.plus_assignment == "official":
            return ascending[ranking].view_as(cos_target)
        return torch.empty_like(ascending).scatter_(0, ranking, ascending).view_as(cos_target)

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        margin = self.margins(cos_target)
        if self.kind == "cos":
            return cos_target - margin
        return arc_margin(cos_target, margin, "plain")

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, m={self.m}, sigma={self.sigma}, kind={self.kind}, plus={self.plus}, "
                f"plus_assignment={self.plus_assignment}")
