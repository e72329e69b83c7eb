"""The head contract: ``forward(embeddings, labels) -> HeadOutput(loss, logits)``.

``logits`` is exactly what cross-entropy sees (margins and scale applied); ``loss`` includes any
extra term (:meth:`Head.loss`). Heads compute in fp32 even under autocast (float64 stays float64, for
gradient checks). Class centres live in ``weight`` ``[num_classes * centres_per_class, embedding_size]``
(one row per class unless a head says otherwise); state that must survive a restart lives in buffers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class HeadOutput:
    loss: torch.Tensor
    logits: torch.Tensor


class Head(nn.Module, ABC):
    """Base class: a classifier over ``num_classes`` identities trained with cross-entropy.

    ``centres_per_class=None`` creates no ``weight``: for heads that wrap another head and expose its
    ``weight`` (center loss).
    """

    def __init__(self, embedding_size: int, num_classes: int, centres_per_class: Optional[int] = 1) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        if centres_per_class is not None:
            rows = num_classes * centres_per_class
            self.weight = nn.Parameter(torch.normal(0.0, 0.01, (rows, embedding_size)))

    @abstractmethod
    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """fp32 logits ``[N, num_classes]`` fed to cross-entropy."""

    def loss(self, logits: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits``; heads with an extra term (MagFace, center loss) add it here."""
        return F.cross_entropy(logits, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
            logits = self.logits(embeddings, labels)
            return HeadOutput(self.loss(logits, embeddings, labels), logits)


class MarginHead(Head):
    """Normalised-softmax head: non-target logits ``s*cos(theta_j)``, target ``s*target_cosine(...)``.

    Only the target column is modified (a gather and a scatter, no one-hot matrix).
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float, centres_per_class: int = 1) -> None:
        super().__init__(embedding_size, num_classes, centres_per_class)
        self.s = s

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``cos(theta)`` between every embedding and every class centre, clamped to [-1, 1]."""
        return F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1.0, 1.0)

    @abstractmethod
    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The margin-modified target term (before scaling) from ``cos(theta_y)`` ``[N, 1]``.

        ``embeddings`` are the raw (un-normalised) embeddings, for heads whose margin depends on the
        feature norm.
        """

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(embeddings)
        index = labels.view(-1, 1)
        return self.s * cos.scatter(1, index, self.target_cosine(cos.gather(1, index), embeddings))

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}"
