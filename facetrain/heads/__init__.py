"""Loss heads: ``build_head(name, embedding_size, num_classes, **hparams)``."""
from __future__ import annotations

from typing import Any

from facetrain.heads import adaptive, center, curricular, elastic, margin, softmax, sphereface, x2softmax  # noqa: F401
from facetrain.heads.base import Head, HeadOutput, MarginHead
from facetrain.heads.registry import HEADS


def build_head(name: str, embedding_size: int, num_classes: int, **hparams: Any) -> Head:
    """Build the head registered as ``name`` (the ``configs/loss/<name>.yaml`` stem)."""
    return HEADS.get(name)(embedding_size=embedding_size, num_classes=num_classes, **hparams)


__all__ = ["HEADS", "Head", "HeadOutput", "MarginHead", "build_head"]
