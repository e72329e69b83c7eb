"""Additive margin heads on the target angle: CosFace and ArcFace."""
from __future__ import annotations

import math

import torch

from facetrain.heads.base import MarginHead
from facetrain.heads.registry import HEADS

_SIN_EPS = 1e-12  # keeps sqrt's gradient finite at cos = +-1


def sine(cos: torch.Tensor) -> torch.Tensor:
    """``sin(theta)`` for theta in [0, pi], with a finite gradient at cos = +-1."""
    return torch.sqrt((1.0 - cos * cos).clamp_min(_SIN_EPS))


@HEADS.register("cosface")
class CosFace(MarginHead):
    """CosFace / LMCL (Wang et al., CVPR 2018): target ``s * (cos(theta) - m)``."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.40) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.m = m

    def target_cosine(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.m


@HEADS.register("arcface")
class ArcFace(MarginHead):
    """ArcFace (Deng et al., CVPR 2019): target ``s * cos(theta + m)``.

    ``cos(theta + m)`` is not monotonic once ``theta + m > pi``. Variants:
    ``fallback`` (default; insightface's official code): ``cos - m*sin(m)`` where ``theta > pi - m``;
    ``easy``: ``cos(theta + m)`` only where ``cos > 0``, else ``cos``;
    ``plain``: ``cos(theta + m)`` everywhere (the bare formula of the paper).
    """

    variants = ("fallback", "easy", "plain")

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5, variant: str = "fallback"
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        if variant not in self.variants:
            raise ValueError(f"ArcFace variant '{variant}' is not one of {self.variants}")
        self.m, self.variant = m, variant
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.threshold = math.cos(math.pi - m)  # cos(theta) below this means theta + m > pi
        self.fallback_margin = math.sin(math.pi - m) * m

    def target_cosine(self, cos_target: torch.Tensor) -> torch.Tensor:
        cos_theta_m = cos_target * self.cos_m - sine(cos_target) * self.sin_m
        if self.variant == "fallback":
            return torch.where(cos_target > self.threshold, cos_theta_m, cos_target - self.fallback_margin)
        if self.variant == "easy":
            return torch.where(cos_target > 0, cos_theta_m, cos_target)
        return cos_theta_m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, variant={self.variant}"
