"""Backbones: ``build_backbone(name, embedding_size, **hparams)`` returns raw-embedding networks."""
from __future__ import annotations

from typing import Any

from torch import nn

from facetrain.backbones import iresnet, ir, mobilefacenet, timm_nets, torchvision_nets, vit  # noqa: F401  (registers the entries)
from facetrain.backbones.registry import BACKBONES


def build_backbone(name: str, embedding_size: int = 512, **hparams: Any) -> nn.Module:
    """Build the backbone registered as ``name``."""
    return BACKBONES.get(name)(embedding_size=embedding_size, **hparams)


__all__ = ["BACKBONES", "build_backbone"]
