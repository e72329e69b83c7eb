"""The trained module: backbone and head in one ``nn.Module`` so one DDP wrapper covers both."""
from __future__ import annotations

import torch
from torch import nn

from facetrain.heads import Head, HeadOutput
from facetrain.heads.distributed import RowShard


class FaceModel(nn.Module):
    """``images -> backbone -> raw embeddings -> head(embeddings, labels)``."""

    def __init__(self, backbone: nn.Module, head: Head) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        return self.head(self.backbone(images), labels)

    def rank_local_tensors(self) -> dict[str, RowShard]:
        """Parameters and buffers (by name in this model) that hold only this rank's rows: a sharded
        head's. DDP leaves them alone and checkpoints gather them."""
        return {f"head.{name}": shard for name, shard in self.head.rank_local_tensors().items()}
