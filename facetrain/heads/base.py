"""The head contract: ``forward(embeddings, labels) -> HeadOutput(loss, logits)``.

``logits`` is exactly what cross-entropy sees (margins and scale applied); ``loss`` includes any
extra term (:meth:`Head.loss`). Heads compute in fp32 even under autocast (float64 stays float64, for
gradient checks). Class centres live in ``weight`` ``[num_classes * centres_per_class, embedding_size]``
(one row per class unless a head says otherwise); state that must survive a restart lives in buffers.

For monitoring, every forward also returns :meth:`Head.diagnostics` (per-sample values, detached) and
:meth:`Head.stats` names the head's state worth watching; the trainer logs both without knowing the head.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class HeadOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N], detached


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
            loss = self.loss(logits, embeddings, labels)
            return HeadOutput(loss, logits, self.diagnostics(embeddings, labels, logits))

    @torch.no_grad()
    def diagnostics(self, embeddings: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample values ``[N]`` to watch during training (device ops only, no host sync): the
        ``target_logit`` cross-entropy sees, the ``target_angle`` in degrees between the embedding and
        its class centre (the nearest one, for heads with several per class) and the ``embedding_norm``.
        A head whose ``weight`` does not hold all its classes' centres overrides this."""
        centres = self.weight.view(self.num_classes, -1, self.embedding_size)[labels]
        cos = torch.einsum("nd,nkd->nk", F.normalize(embeddings), F.normalize(centres, dim=2)).amax(dim=1)
        return {
            "target_logit": logits.gather(1, labels.view(-1, 1)).squeeze(1),
            "target_angle": torch.acos(cos.clamp(-1.0, 1.0)) * (180.0 / math.pi),
            "embedding_norm": embeddings.norm(dim=1),
        }

    def stats(self) -> dict[str, torch.Tensor]:
        """The head's state worth watching, as named scalar tensors read at log intervals: by default every
        scalar floating-point buffer (AdaFace's ``batch_mean`` and ``batch_std``, CurricularFace's ``t``)."""
        return {name: buffer for name, buffer in self.named_buffers() if buffer.dim() == 0 and buffer.is_floating_point()}


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
