"""The output layer face backbones share: BN -> dropout -> flatten -> FC -> BN (insightface's layout).

Flattening keeps the spatial layout of the last feature map, which matters for aligned faces. Under
autocast the FC and the last BN run in fp32, as in arcface_torch's IResNet (``fc(x.float())`` outside its
autocast region): the embedding is a 25,088-term dot product per output.
"""
from __future__ import annotations

import torch
from torch import nn

from facetrain.precision import at_least_fp32, no_autocast


class FlattenEmbedding(nn.Module):
    """``[N, C, H, W]`` feature map of ``positions = H * W`` -> ``[N, embedding_size]`` raw embedding."""

    def __init__(self, channels: int, positions: int, embedding_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * positions, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # insightface fixes the final BN scale at 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.bn(x), 1))
        with no_autocast(x):
            return self.features(self.fc(at_least_fp32(x)))
