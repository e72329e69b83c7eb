"""Margins that adapt to the feature norm: AdaFace (image quality) and MagFace (magnitude)."""
from __future__ import annotations

import math

import torch

from facetrain.heads.base import MarginHead
from facetrain.parallel.collectives import gather_batch
from facetrain.heads.margin import ARC_VARIANTS, angle, arc_margin, check_choice
from facetrain.heads.registry import HEADS


@HEADS.register("adaface")
class AdaFace(MarginHead):
    """AdaFace (Kim et al., CVPR 2022): the margin follows image quality, read from the feature norm.

    ``z = clip(h * (||x|| - mu) / (sigma + eps), -1, 1)``, target ``s * (cos(theta - m*z) - (m + m*z))``:
    angular margin for low norms, additive for high ones. ``mu``, ``sigma`` (buffers ``batch_mean``,
    ``batch_std``) are EMAs with rate ``t_alpha`` of the batch mean and unbiased std of ``||x||``. As in
    the official code: norms clipped to [0.001, 100] and detached; statistics start at 20 and 100 and are
    updated with the current batch before use (training only); ``theta - m*z`` is clipped to the angle
    range (official: [eps, pi - eps], here [0, pi]). The official code also clamps cos to
    ``+-(1 - 1e-3)`` for its arccos; here ``theta`` comes from :func:`angle`, exact with a finite
    gradient. Under DDP the statistics are those of the global batch, the same on every rank.
    """

    eps = 1e-3

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.4, h: float = 0.333,
        t_alpha: float = 0.01,
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.m, self.h, self.t_alpha = m, h, t_alpha
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    @torch.no_grad()
    def margin_scaler(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``z`` ``[N, 1]`` (no gradient), after the EMA update when training."""
        norms = embeddings.norm(dim=1, keepdim=True).clamp(0.001, 100.0)
        if self.training:
            batch = gather_batch(norms)
            self.batch_mean.lerp_(batch.mean(), self.t_alpha)
            if batch.numel() > 1:
                self.batch_std.lerp_(batch.std(), self.t_alpha)
        return (self.h * (norms - self.batch_mean) / (self.batch_std + self.eps)).clamp(-1.0, 1.0)

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        z = self.margin_scaler(embeddings)
        theta = (angle(cos_target) - self.m * z).clamp(0.0, math.pi)
        return torch.cos(theta) - self.m * (1.0 + z)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"


@HEADS.register("magface")
class MagFace(MarginHead):
    """MagFace (Meng et al., CVPR 2021): a margin that grows with the feature magnitude.

    ``a = clamp(||x||, l_a, u_a)`` (official code; no gradient outside the range), margin
    ``m(a) = l_m + (u_m - l_m) (a - l_a) / (u_a - l_a)`` (the gradient flows through it into ``a``),
    target ``s * cos(theta + m(a))``, loss ``CE + lambda_g * mean(g(a))`` with ``g(a) = a / u_a^2 + 1 / a``.
    ``variant`` (see :func:`~facetrain.heads.margin.arc_margin`) treats ``theta + m(a) > pi``: ``easy``
    (default) is the official code's (``MagLinear(easy_margin=True)``); the paper writes the bare
    ``cos(theta + m(a))``, which is ``plain``.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0,
        l_m: float = 0.45, u_m: float = 0.8, lambda_g: float = 35.0, variant: str = "easy",
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.l_a, self.u_a, self.l_m, self.u_m, self.lambda_g = l_a, u_a, l_m, u_m, lambda_g
        self.variant = check_choice(variant, ARC_VARIANTS, "MagFace variant")

    def magnitude(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.norm(dim=1, keepdim=True).clamp(self.l_a, self.u_a)

    def margin(self, a: torch.Tensor) -> torch.Tensor:
        return self.l_m + (self.u_m - self.l_m) * (a - self.l_a) / (self.u_a - self.l_a)

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return arc_margin(cos_target, self.margin(self.magnitude(embeddings)), self.variant)

    def extra_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a = self.magnitude(embeddings).squeeze(1)
        return self.lambda_g * (a / self.u_a**2 + 1.0 / a)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, "
                f"lambda_g={self.lambda_g}, variant={self.variant}")
