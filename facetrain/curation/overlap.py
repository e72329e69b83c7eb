"""Overlap with evaluation data (insightface's rule): a training identity whose centre has cosine above 0.4 with
an image of a verification set, or with the centre of a gallery identity, is the same person as someone the model
will be tested on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from facetrain.curation.similarity import similar_pairs
from facetrain.data.verification_bin import load_verification_bin
from facetrain.errors import DataError
from facetrain.eval.embed import FlipMode, embed_files, embed_images
from facetrain.eval.feature_cache import cached_features, file_list_digest
from facetrain.eval.galleries import ImageSet
from facetrain.eval.identification import enrol_mean
from facetrain.eval.pairs import read_pairs

DEFAULT_OVERLAP_COSINE = 0.4


@dataclass
class EvaluationImages:
    """Normalised embeddings of evaluation images, and centres of gallery identities, and where each came from
    (``lfw.bin#12``, ``pairs.txt:a/1.jpg``, ``gallery:<folder>/<identity>``)."""

    features: np.ndarray
    names: list[str]


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def evaluation_images(bins: list[Path], pair_lists: list[tuple[Path, Path]], galleries: list[ImageSet],
                      backbone: nn.Module, device: torch.device, flip: FlipMode, batch_size: int, workers: int,
                      cache: Optional[Path] = None, model_sha256: str = "") -> EvaluationImages:
    """The distinct images of each ``.bin`` and of each ``(pair list, image folder)``, embedded; each gallery
    identity once, by the mean of its images' normalised embeddings (as ``identify.py --enrol mean`` enrols it),
    the gallery's features cached in ``cache`` under the model's sha256."""
    features, names = [], []
    for path in bins:
        if not path.is_file():
            raise DataError(f"--eval-bin {path} does not exist", "pass a verification .bin (lfw.bin, cfp_fp.bin, ...)")
        images = load_verification_bin(path).images
        features.append(embed_images(backbone, images, batch_size, device, flip))
        names += [f"{path.name}#{i}" for i in range(len(images))]
    for pairs_path, folder in pair_lists:
        pairs = read_pairs(pairs_path, folder)
        distinct = sorted(set(pairs.names))
        features.append(embed_files(backbone, folder, distinct, device, batch_size, workers, flip))
        names += [f"{pairs_path.name}:{name}" for name in distinct]
    for gallery in galleries:
        key = {"model": model_sha256, "gallery": file_list_digest(gallery.base, gallery.names), "flip": flip}
        embedded = cached_features(cache, key, lambda: embed_files(backbone, gallery.base, gallery.names, device,
                                                                   batch_size, workers, flip))
        centres, identities = enrol_mean(embedded, gallery.identities)
        features.append(centres.astype(np.float32))
        names += [f"gallery:{gallery.base.name}/{identity}" for identity in identities]
    return EvaluationImages(_normalised(np.concatenate(features)), names)


@dataclass
class Overlap:
    identities: np.ndarray  # training identities that match an evaluation image or gallery identity
    best_image: np.ndarray  # the row of EvaluationImages each matches best
    cosine: np.ndarray


def find_overlap(centres: np.ndarray, present: np.ndarray, evaluation: EvaluationImages, threshold: float) -> Overlap:
    """Training identities (``present``: those with samples) whose centre is above ``threshold`` from any row of
    ``evaluation`` (an image or a gallery identity's centre)."""
    i, j, cos = similar_pairs(centres, threshold, evaluation.features)
    keep = present[i]
    i, j, cos = i[keep], j[keep], cos[keep]
    order = np.lexsort((-cos, i))  # per identity, its best match first
    i, j, cos = i[order], j[order], cos[order]
    first = np.ones(len(i), bool)
    first[1:] = i[1:] != i[:-1]
    return Overlap(i[first], j[first], cos[first])
