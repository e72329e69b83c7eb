"""Verification targets of ``scripts/evaluate.py``: insightface ``.bin`` sets and pair lists over image folders,
each able to embed its pairs' images and to say what its features depend on (for the feature cache)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from facetrain.align.photos import PhotoAligner, photo_inputs
from facetrain.data.verification_bin import decode_verification_images, read_verification_bin
from facetrain.errors import DataError
from facetrain.eval.embed import FlipMode, embed_files, embed_images
from facetrain.eval.feature_cache import file_list_digest
from facetrain.eval.pairs import PairList, read_pairs


@dataclass
class EmbedSettings:
    device: torch.device
    batch_size: int = 256
    workers: int = 0
    flip: FlipMode = "sum"
    progress: bool = False


class BinTarget:
    """An insightface ``.bin`` (its images decoded only when they are embedded)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        self.encoded, self.issame = read_verification_bin(path)

    def key(self) -> dict[str, Any]:
        return {"bin": file_list_digest(self.path.parent, [self.path.name])}

    def embed(self, backbone: nn.Module, settings: EmbedSettings) -> np.ndarray:
        images, index = decode_verification_images(self.encoded, self.path)
        return embed_images(backbone, images, settings.batch_size, settings.device, settings.flip,
                            progress=settings.progress, desc=self.name)[index]


class PairTarget:
    """A pair list over a folder of images (each image embedded once, however many pairs name it); with an
    ``aligner``, raw photos whose faces it crops."""

    def __init__(self, pairs: PairList, aligner: Optional[PhotoAligner] = None) -> None:
        self.name, self.pairs, self.issame, self.aligner = pairs.name, pairs, pairs.issame, aligner
        self.unique, self.inverse = np.unique(np.array(pairs.names), return_inverse=True)

    def key(self) -> dict[str, Any]:
        return {"pairs": file_list_digest(self.pairs.base, self.pairs.names),
                **({"align": self.aligner.key()} if self.aligner else {})}

    def embed(self, backbone: nn.Module, settings: EmbedSettings) -> np.ndarray:
        features = embed_files(backbone, self.pairs.base, list(self.unique), settings.device, settings.batch_size,
                               settings.workers, settings.flip, settings.progress, self.name,
                               fix="restore the image or remove its pair from the list", **photo_inputs(self.aligner))
        return features[self.inverse]


def verification_targets(bins: dict[str, Path], pair_lists: list[Path], images: Path | None,
                         aligner: Optional[PhotoAligner] = None) -> dict[str, BinTarget | PairTarget]:
    """Every target by name: ``bins`` (name -> .bin path) and the pair lists over ``images`` (default: each
    list's folder; raw photos cropped by ``aligner`` if given); two targets of one name are refused."""
    targets: dict[str, BinTarget | PairTarget] = {name: BinTarget(name, path) for name, path in bins.items()}
    for path in pair_lists:
        target = PairTarget(read_pairs(path, images if images is not None else path.parent), aligner)
        if target.name in targets:
            raise DataError(f"two verification targets are named '{target.name}' ({path} and another)",
                            "rename the pair list")
        targets[target.name] = target
    return targets
