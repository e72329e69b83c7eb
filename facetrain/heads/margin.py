"""Fixed-margin heads on normalised features: NormFace, CosFace, ArcFace, combined margin, sub-center ArcFace.

Also the helpers the other margin heads share: :func:`sine`, :func:`angle`, :func:`arc_margin`,
:func:`straight_through`.

Which official code each option equals (checked side by side with that code, run outside this repository;
the facts are pinned in ``tests/test_heads.py``), insightface commits named:

- ``arcface variant=plain straight_through=true``: today's arcface_torch (``ArcFace`` and
  ``CombinedMarginLoss(s, 1.0, m, 0.0)`` in ``recognition/arcface_torch/losses.py`` since 657ae30e,
  Dec 2022, unchanged in substance at 7fadd420): target ``cos(theta + m)`` everywhere, built under
  ``no_grad``, so its gradient is that of ``s*cos``.
- ``arcface variant=fallback`` (default): arcface_torch before 657ae30e (e.g. d9cb10e6, April 2022, the
  code of its published model zoo figures; 5c9f7c47 just before the change): ``cos(theta + m)`` while
  ``theta + m <= pi``, else ``cos - m*sin(m)``, with the formula's gradient.
- ``arcface variant=plain``: the paper and insightface's mxnet code (``arccos``, ``+ m``, ``cos``; read,
  not run: mxnet is not installed), gradient through the formula.
- ``combined straight_through=true``: arcface_torch's ``CombinedMarginLoss`` since 657ae30e where it
  applies a margin: its angular part (``m1``, ``m2``) under ``no_grad``, CosFace's ``- m3`` differentiable.
- ``cosface``: arcface_torch's ``CosFace`` (the subtraction is differentiable in every version).
- ``subcenter_arcface`` (``variant=plain``): the paper and the official sub-center code
  (``recognition/subcenter_arcface/train_parall.py``: max over the ``K`` sub-centres, then
  ``cos(arccos(cos) + m)``; mxnet, read, not run).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from facetrain.heads.base import MarginHead
from facetrain.heads.registry import HEADS

_SIN_EPS = 1e-12  # keeps sqrt's gradient finite at cos = +-1

Margin = Union[float, torch.Tensor]  # one margin, or one per sample ([N, 1])
ARC_VARIANTS = ("fallback", "easy", "plain")


def check_choice(value: str, options: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``options``; a ValueError naming them otherwise."""
    if value not in options:
        raise ValueError(f"{what} '{value}' is not one of {options}")
    return value


def sine(cos: torch.Tensor) -> torch.Tensor:
    """``sin(theta)`` for theta in [0, pi], with a finite gradient at cos = +-1."""
    return torch.sqrt((1.0 - cos * cos).clamp_min(_SIN_EPS))


def angle(cos: torch.Tensor) -> torch.Tensor:
    """``theta = arccos(cos)`` in [0, pi] with a finite gradient at cos = +-1 (arccos' is infinite there)."""
    return torch.atan2(sine(cos), cos)


def straight_through(value: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """``value`` forward, the gradient of ``cos`` backward: what writing a margin into the cosine matrix
    under ``torch.no_grad`` does in the official arcface_torch and X2-Softmax code."""
    return cos + (value - cos).detach()


def _cos_sin(m: Margin) -> tuple[Margin, Margin]:
    return (torch.cos(m), torch.sin(m)) if isinstance(m, torch.Tensor) else (math.cos(m), math.sin(m))


def arc_margin(cos: torch.Tensor, m: Margin, variant: str = "plain") -> torch.Tensor:
    """``cos(theta + m)``, treating ``theta + m > pi`` (where it stops decreasing) as ``variant`` says:

    ``plain``: the formula everywhere; ``fallback`` (insightface): ``cos - m*sin(m)`` once
    ``theta > pi - m``; ``easy``: ``cos(theta + m)`` only where ``cos > 0``, else ``cos``.
    """
    cos_m, sin_m = _cos_sin(m)
    target = cos * cos_m - sine(cos) * sin_m
    if variant == "fallback":
        return torch.where(cos > -cos_m, target, cos - m * sin_m)  # -cos(m) = cos(pi - m)
    if variant == "easy":
        return torch.where(cos > 0, target, cos)
    return target


@HEADS.register("normface")
class NormFace(MarginHead):
    """NormFace (Wang et al., ACM MM 2017): logits ``s * cos(theta_j)`` for every class, no margin."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0) -> None:
        super().__init__(embedding_size, num_classes, s)

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return cos_target


@HEADS.register("cosface")
class CosFace(MarginHead):
    """CosFace / LMCL (Wang et al., CVPR 2018): target ``s * (cos(theta) - m)``."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.40,
                 interclass_filtering_threshold: float = 0.0) -> None:
        super().__init__(embedding_size, num_classes, s, interclass_filtering_threshold=interclass_filtering_threshold)
        self.m = m

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return cos_target - self.m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


@HEADS.register("arcface")
class ArcFace(MarginHead):
    """ArcFace (Deng et al., CVPR 2019): target ``s * cos(theta + m)``.

    ``cos(theta + m)`` is not monotonic once ``theta + m > pi``. Variants (:func:`arc_margin`):
    ``fallback`` (default; arcface_torch before Dec 2022): ``cos - m*sin(m)`` where ``theta > pi - m``;
    ``easy``: ``cos(theta + m)`` only where ``cos > 0``, else ``cos``;
    ``plain``: ``cos(theta + m)`` everywhere (the paper's formula). ``straight_through``: the target's
    value as the variant says, the gradient of ``s*cos`` (with ``plain``: today's arcface_torch). The
    module docstring names the commits each combination equals.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5, variant: str = "fallback",
        straight_through: bool = False, centres_per_class: int = 1, interclass_filtering_threshold: float = 0.0,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, centres_per_class, interclass_filtering_threshold)
        self.m, self.variant = m, check_choice(variant, ARC_VARIANTS, "ArcFace variant")
        self.straight_through = straight_through

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        target = arc_margin(cos_target, self.m, self.variant)
        return straight_through(target, cos_target) if self.straight_through else target

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, variant={self.variant}, straight_through={self.straight_through}"


@HEADS.register("combined")
class CombinedMargin(MarginHead):
    """Combined margin (ArcFace paper, Deng et al., CVPR 2019): target ``s * (cos(m1*theta + m2) - m3)``.

    All three margins are honoured (arcface_torch's ``CombinedMarginLoss`` drops ``m1`` and ``m2``
    whenever ``m3 > 0``; its original mxnet code, like this head, applies the formula as written).
    ``straight_through``: the angular part ``cos(m1*theta + m2)`` takes the gradient of ``cos``, the
    ``- m3`` stays differentiable, as today's arcface_torch computes whichever margin it applies.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2,
        straight_through: bool = False, interclass_filtering_threshold: float = 0.0,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, interclass_filtering_threshold=interclass_filtering_threshold)
        self.m1, self.m2, self.m3, self.straight_through = m1, m2, m3, straight_through

    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        angular = torch.cos(self.m1 * angle(cos_target) + self.m2)
        if self.straight_through:
            angular = straight_through(angular, cos_target)
        return angular - self.m3

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"straight_through={self.straight_through}")


@HEADS.register("subcenter_arcface")
class SubCenterArcFace(ArcFace):
    """Sub-center ArcFace (Deng et al., ECCV 2020): ``k`` sub-centres per class, ``cos(theta_j)`` is the
    largest cosine to class ``j``'s sub-centres, then ArcFace's margin on the target.

    ``weight`` is ``[num_classes * k, embedding_size]``, class-major: rows ``j*k .. j*k + k-1`` are class
    ``j``'s sub-centres (:attr:`subcenters` is the ``[num_classes, k, embedding_size]`` view). The
    default ``variant=plain`` is the paper's and the official sub-center code's ``cos(theta + m)``; the
    other variants and ``straight_through`` are ArcFace's. The paper's later step (drop non-dominant
    sub-centres, clean the data, retrain) is left to the user.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5, k: int = 3,
        variant: str = "plain", straight_through: bool = False, interclass_filtering_threshold: float = 0.0,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, m, variant, straight_through, centres_per_class=k,
                         interclass_filtering_threshold=interclass_filtering_threshold)
        self.k = k

    @property
    def subcenters(self) -> torch.Tensor:
        return self.weight.view(self.num_classes, self.k, self.embedding_size)

    def cosine(self, embeddings: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().cosine(embeddings, classes).view(len(embeddings), -1, self.k).amax(dim=2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"
