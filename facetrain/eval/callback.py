"""Verification on insightface ``.bin`` sets, during training and in ``scripts/evaluate.py`` alike."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from facetrain.data.verification_bin import load_verification_bin
from facetrain.eval.embed import FlipMode, embed_images
from facetrain.eval.verification import evaluate


class VerificationCallback:
    """Loads the verification sets once; ``__call__(backbone)`` returns ``{target: metrics}``, the
    metrics of :func:`facetrain.eval.verification.evaluate` plus ``pairs``."""

    def __init__(
        self,
        targets: dict[str, Path],
        device: torch.device,
        batch_size: int = 256,
        flip: FlipMode = "sum",
        channels_last: bool = False,
        progress: bool = False,
    ) -> None:
        self.sets = {name: load_verification_bin(path) for name, path in targets.items()}
        self.device, self.batch_size, self.flip, self.channels_last = device, batch_size, flip, channels_last
        self.progress = progress

    def __call__(self, backbone: nn.Module) -> dict[str, dict[str, Any]]:
        results = {}
        for name, pairs in self.sets.items():
            embeddings = embed_images(backbone, pairs.images, self.batch_size, self.device, self.flip, self.channels_last,
                                      self.progress, name)
            results[name] = {"pairs": len(pairs.issame), **evaluate(embeddings[pairs.index], pairs.issame)}
        return results
