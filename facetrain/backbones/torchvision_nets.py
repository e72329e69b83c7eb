"""torchvision's ResNet-50 and MobileNets as face backbones (randomly initialised; no downloads).

The ImageNet classifier is replaced by the shared flatten embedding head. At 112x112 input every
one of these networks ends in a 4x4 feature map (overall stride 32, rounded up). torchvision is imported
when one of them is built: importing it costs seconds of start-up that the other backbones do not need.
"""
from __future__ import annotations

import math
from typing import Callable
from torch import nn

from facetrain.backbones.checkpointing import refuse_checkpointing
from facetrain.backbones.embedding import FlattenEmbedding
from facetrain.backbones.registry import BACKBONES

INPUT_SIZE = 112
_SPATIAL = math.ceil(INPUT_SIZE / 32)


class TorchvisionBackbone(nn.Module):
    """``features`` of a torchvision network followed by :class:`FlattenEmbedding`."""

    def __init__(self, features: nn.Module, channels: int, embedding_size: int, dropout: float) -> None:
        super().__init__()
        self.body = features
        self.output = FlattenEmbedding(channels, _SPATIAL * _SPATIAL, embedding_size, dropout)

    def forward(self, x):
        return self.output(self.body(x))


def _resnet50_features() -> tuple[nn.Module, int]:
    from torchvision import models

    net = models.resnet50(weights=None)
    return nn.Sequential(*list(net.children())[:-2]), net.fc.in_features  # drop avgpool and fc


def _mobilenet_features(name: str) -> Callable[[], tuple[nn.Module, int]]:
    def features() -> tuple[nn.Module, int]:
        from torchvision import models

        net = getattr(models, name)(weights=None)
        return net.features, net.features[-1].out_channels

    return features


_FEATURES = {
    "resnet50": _resnet50_features,
    "mobilenet_v2": _mobilenet_features("mobilenet_v2"),
    "mobilenet_v3_large": _mobilenet_features("mobilenet_v3_large"),
}


def _register(name: str) -> None:
    @BACKBONES.register(name)
    def build(embedding_size: int = 512, dropout: float = 0.0, activation_checkpointing: bool = False) -> TorchvisionBackbone:
        refuse_checkpointing(name, activation_checkpointing)
        features, channels = _FEATURES[name]()
        return TorchvisionBackbone(features, channels, embedding_size, dropout)

    build.__doc__ = f"torchvision's {name} with the flatten embedding head."


for _name in _FEATURES:
    _register(_name)
