"""The output layer face backbones share: BN -> dropout -> flatten -> FC -> BN (insightface's layout).

Flattening keeps the spatial layout of the last feature map, which matters for aligned faces.
"""
from __future__ import annotations

import torch
from torch import nn


class FlattenEmbedding(nn.Module):
    """``[N, C, H, W]`` feature map -> ``[N, embedding_size]`` raw embedding."""

    def __init__(self, channels: int, spatial: int, embedding_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # insightface fixes the final BN scale at 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.dropout(torch.flatten(self.bn(x), 1))))
