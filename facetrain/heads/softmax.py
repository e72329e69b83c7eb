"""Plain softmax: an (optionally biased) linear classifier on the raw embedding."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.heads.base import Head
from facetrain.heads.registry import HEADS


@HEADS.register("softmax")
class SoftmaxHead(Head):
    """``logits = x W^T (+ b)``; no normalisation, no margin."""

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = False) -> None:
        super().__init__(embedding_size, num_classes)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def scores(self, embeddings: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        bias = None if self.bias is None else self.class_rows(self.bias, classes)
        return F.linear(embeddings, self.class_rows(self.weight, classes), bias)
