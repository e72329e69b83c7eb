"""One pass over a training set: each sample's embedding and a hash of its decoded pixels, computed with the
DataLoader's workers in chunks, each chunk cached (``facetrain.eval.feature_cache``) so an interrupted pass
resumes at the chunk it was in and a second run with other thresholds costs no pass at all."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from facetrain.cores import capped_workers
from facetrain.data.datasets import FaceDataset
from facetrain.errors import DataError
from facetrain.eval.embed import FlipMode, embed_batches
from facetrain.eval.feature_cache import cached_features

CHUNK = 65536  # samples per cached piece of the pass


class DecodedSamples(Dataset):
    """``(image uint8 [H,W,3], pixel hash uint64 [2], readable)`` of samples ``start..stop`` of ``dataset``: read
    with :meth:`FaceDataset.load` (an unreadable sample is reported, not replaced by its neighbour)."""

    def __init__(self, dataset: FaceDataset, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        size = self.dataset.image_size
        try:
            image, _ = self.dataset.load(self.start + index)
        except DataError:
            return np.zeros((size, size, 3), np.uint8), np.zeros(2, np.uint64), False
        return image, pixel_hash(image), True


def pixel_hash(image: np.ndarray) -> np.ndarray:
    """128 bits of BLAKE2b over the decoded pixels and their shape: equal for images of the same pixels."""
    digest = hashlib.blake2b(str(image.shape).encode() + np.ascontiguousarray(image).tobytes(), digest_size=16)
    return np.frombuffer(digest.digest(), dtype=np.uint64).copy()


@dataclass
class SampleFeatures:
    """Per sample: ``features`` float32 ``[N, d]`` (raw embeddings), ``hashes`` uint64 ``[N, 2]``, ``readable`` bool."""

    features: np.ndarray
    hashes: np.ndarray
    readable: np.ndarray

    def normalised(self) -> np.ndarray:
        norms = np.linalg.norm(self.features, axis=1, keepdims=True)
        return self.features / np.maximum(norms, 1e-12)


def _chunk_pass(dataset: FaceDataset, start: int, stop: int, backbone: nn.Module, device: torch.device,
                batch_size: int, workers: int, flip: FlipMode) -> dict[str, np.ndarray]:
    hashes, readable = [], []

    def batches():
        loader = DataLoader(DecodedSamples(dataset, start, stop), batch_size=batch_size, num_workers=workers)
        for images, batch_hashes, ok in loader:
            hashes.append(batch_hashes.numpy())
            readable.append(ok.numpy())
            yield images

    features = embed_batches(backbone, batches(), device, flip)
    return {"features": features, "hashes": np.concatenate(hashes), "readable": np.concatenate(readable)}


def sample_features(dataset: FaceDataset, backbone: nn.Module, device: torch.device, cache: Optional[Path],
                    key: dict[str, Any], batch_size: int = 256, workers: int = 0, flip: FlipMode = "none",
                    chunk: int = CHUNK, progress: bool = False) -> SampleFeatures:
    """The features and pixel hashes of every sample of ``dataset``; ``key`` (model and dataset digests) names the
    cache entries in ``cache`` (None: no cache)."""
    workers = capped_workers(workers)
    parts: dict[str, list[np.ndarray]] = {"features": [], "hashes": [], "readable": []}
    starts = range(0, len(dataset), chunk)
    for number, start in enumerate(starts):
        stop = min(start + chunk, len(dataset))
        computed: dict[str, np.ndarray] = {}

        def compute(what: str) -> np.ndarray:
            if not computed:
                computed.update(_chunk_pass(dataset, start, stop, backbone, device, batch_size, workers, flip))
            return computed[what]

        for what in parts:
            chunk_key = {**key, "what": what, "samples": [start, stop], "flip": flip}
            parts[what].append(cached_features(cache, chunk_key, lambda what=what: compute(what)))
        if progress:
            print(f"clean_dataset: features of {stop} of {len(dataset)} samples ({number + 1}/{len(starts)} chunks)",
                  flush=True)
    return SampleFeatures(np.concatenate(parts["features"]).astype(np.float32), np.concatenate(parts["hashes"]),
                          np.concatenate(parts["readable"]).astype(bool))
