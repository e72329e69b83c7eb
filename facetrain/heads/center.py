"""Center loss: pulls each embedding towards a running centre of its class, on top of any head."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from facetrain.heads.base import Head
from facetrain.parallel.collectives import gather_batch
from facetrain.heads.registry import HEADS


@HEADS.register("center")
class CenterLoss(Head):
    """Center loss (Wen et al., ECCV 2016) added to the loss of another head, ``base`` (softmax by default;
    any registered head, built with ``base_args``, e.g. ``loss=center loss.base=arcface``).

    ``loss = base loss + lambda_c / 2 * mean_i ||x_i - c_{y_i}||^2`` on the raw embeddings; the logits and
    ``weight`` are the base head's. The centres (buffer ``centers``) are no parameters: after every
    training forward they move by the paper's rule ``c_j -= alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)``,
    not scaled by ``lambda_c``, computed over the global batch under DDP (so every rank holds the same
    centres, equal to one process's on the concatenated batch). They start as the official Caffe
    layer's xavier filler, uniform in ``+-sqrt(3 / embedding_size)``.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, lambda_c: float = 0.003, alpha: float = 0.5,
        base: str = "softmax", base_args: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, centres_per_class=None)
        if base == "center":
            raise ValueError("center loss cannot wrap itself: choose another base head")
        self.lambda_c, self.alpha = lambda_c, alpha
        self.base = HEADS.get(base)(embedding_size=embedding_size, num_classes=num_classes, **(base_args or {}))
        bound = math.sqrt(3.0 / embedding_size)
        self.register_buffer("centers", torch.empty(num_classes, embedding_size).uniform_(-bound, bound))

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def scores(self, embeddings: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.base.scores(embeddings, classes)

    def target_logit(self, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.base.target_logit(score_target, embeddings)

    def other_logits(self, scores: torch.Tensor, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.base.other_logits(scores, score_target, embeddings)

    def filter_non_targets(self, scores: torch.Tensor, column: torch.Tensor,
                           has_target: torch.Tensor | bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.base.filter_non_targets(scores, column, has_target)

    def record_filtered(self, count: torch.Tensor) -> None:
        self.base.record_filtered(count)

    def extra_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pull = self.lambda_c * 0.5 * (embeddings - self.centers[labels]).pow(2).sum(dim=1)
        if self.training:
            self.update_centers(embeddings, labels)
        base = self.base.extra_loss(embeddings, labels)
        return pull if base is None else pull + base

    @torch.no_grad()
    def update_centers(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """The paper's centre step on the global batch."""
        x, y = gather_batch(embeddings).to(self.centers.dtype), gather_batch(labels)
        counts = torch.bincount(y, minlength=self.num_classes).to(x.dtype).unsqueeze(1)
        sums = torch.zeros_like(self.centers).index_add_(0, y, x)
        self.centers -= self.alpha * (counts * self.centers - sums) / (1.0 + counts)

    def extra_repr(self) -> str:
        return f"lambda_c={self.lambda_c}, alpha={self.alpha}"
