"""Identity-balanced batches (``trainer.sampler``): ``P identities x K images`` per batch, or TFace's EKD mix of
half random images and half ``P x K`` (``recognition/tasks/ekd/dataset.py``'s BalancedBatchSampler: 32 random +
8 identities x 4 images per GPU).

Every rank's batch is laid out alike: its random part (``mixed``: ``batch_size / 2`` images) and then its ``P =
(batch_size - random part) / K`` identities, K images each, side by side. The ``world size x P`` identities of a
global batch are distinct; an epoch deals identities in rounds, each round a new shuffle of every identity, so an
identity appears at most once per round. Within a round an identity gives K of its images in a shuffled order
(a new shuffle each epoch), the next round the next K (cyclically): identities with fewer than K images repeat
theirs, each image K // n or K // n + 1 times (sampling with replacement, as TFace's sampler repeats them). The
random part is a shuffle of every image, as the default sampler's. An epoch has as many batches as the default
sampler's, all drawn from ``(seed, epoch)``: a run resumes mid-epoch with the remaining batches exactly.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from facetrain.data.sampler import ResumableDistributedSampler
from facetrain.errors import ConfigError, DataError

SAMPLERS = ("random", "balanced", "mixed")


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The label of every sample, ``[len(dataset)]`` int64, without decoding images (``labels`` when the dataset
    holds them, else ``label_of`` per sample: a RecordIO file's headers are read once)."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [dataset.label_of(i) for i in range(len(dataset))]  # type: ignore[attr-defined]
    return np.asarray(labels, dtype=np.int64)


class IdentityBalancedSampler(ResumableDistributedSampler):
    """``P x K`` identity-balanced global batches, after ``random_per_rank`` random images on every rank (see the
    module docstring); dealt, resumed and sized as :class:`ResumableDistributedSampler`'s."""

    def __init__(self, labels: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 accumulate: int = 1, images_per_identity: int = 4, random_per_rank: int = 0) -> None:
        super().__init__(len(labels), batch_size, rank, world_size, seed, accumulate)
        balanced = batch_size - random_per_rank
        if images_per_identity < 1 or balanced < images_per_identity or balanced % images_per_identity:
            raise ValueError(f"{balanced} balanced images per rank do not split into identities of {images_per_identity}")
        self.images_per_identity, self.random_per_rank = images_per_identity, random_per_rank
        self.identities_per_rank = balanced // images_per_identity
        # identities numbered 0 .. I-1 in label order (labels without images have none); samples grouped by
        # identity place identity i's at start[i] .. start[i] + count[i] - 1
        _, identity_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
        self.identity_of = torch.from_numpy(identity_of.astype(np.int64))
        self.count = torch.from_numpy(counts)
        self.start = torch.cumsum(self.count, 0) - self.count
        per_batch = self.identities_per_rank * world_size
        if len(counts) < per_batch:
            raise DataError(f"a global batch of {world_size} x {self.identities_per_rank} identities needs "
                            f"{per_batch} identities, but the dataset has {len(counts)}",
                            "lower trainer.batch_size, raise trainer.images_per_identity, or use trainer.sampler=random")
        self.batches_per_round = len(counts) // per_batch

    def epoch_batches(self, generator: torch.Generator) -> torch.Tensor:
        batches, world = self.batches_per_epoch, self.world_size
        random = torch.randperm(self.size, generator=generator)[: batches * world * self.random_per_rank]
        balanced = self._identity_images(generator).view(batches, world, -1)
        return torch.cat([random.view(batches, world, self.random_per_rank), balanced], dim=2).view(batches, -1)

    def _identity_images(self, generator: torch.Generator) -> torch.Tensor:
        """``[batches, world x P, K]`` sample indices: each batch's identities and their K images."""
        k, per_batch, identities = self.images_per_identity, self.identities_per_rank * self.world_size, len(self.count)
        rounds = -(-self.batches_per_epoch // self.batches_per_round)
        dealt = self.batches_per_round * per_batch  # a round's shuffle of the identities, cut to whole batches
        chosen = torch.cat([torch.randperm(identities, generator=generator)[:dealt] for _ in range(rounds)])
        chosen = chosen.view(-1, per_batch)[: self.batches_per_epoch]
        # every sample grouped by identity, in a shuffled order within each identity for this epoch
        shuffled = torch.randperm(self.size, generator=generator)
        within = shuffled[torch.argsort(self.identity_of[shuffled], stable=True)]
        round_of = (torch.arange(self.batches_per_epoch) // self.batches_per_round).view(-1, 1, 1)
        offsets = (round_of * k + torch.arange(k).view(1, 1, k)) % self.count[chosen].unsqueeze(2)
        return within[self.start[chosen].unsqueeze(2) + offsets]


def build_sampler(kind: str, dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int,
                  accumulate: int, images_per_identity: int) -> ResumableDistributedSampler:
    """``trainer.sampler``'s sampler: ``random`` (every image once per epoch), ``balanced`` (P x K) or ``mixed``
    (half random, half P x K)."""
    if kind == "random":
        return ResumableDistributedSampler(len(dataset), batch_size, rank, world_size, seed, accumulate)
    if kind not in SAMPLERS:
        raise ConfigError(f"unknown trainer.sampler '{kind}'", f"choose one of: {', '.join(SAMPLERS)}")
    random_per_rank = batch_size // 2 if kind == "mixed" else 0
    return IdentityBalancedSampler(dataset_labels(dataset), batch_size, rank, world_size, seed, accumulate,
                                   images_per_identity, random_per_rank)
