"""A distributed, resumable sampler: the epoch's order depends only on (seed, epoch)."""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler


class ResumableDistributedSampler(Sampler[int]):
    """Shuffles ``size`` indices with ``seed + epoch``, deals whole global batches to ranks, and can
    start an epoch at any batch (to resume mid-epoch). Incomplete global batches are dropped, and so are
    the last batches of an epoch that do not fill ``accumulate`` of them (one optimizer step)."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 accumulate: int = 1) -> None:
        self.size, self.batch_size, self.rank, self.world_size, self.seed = size, batch_size, rank, world_size, seed
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = size // self.global_batch // accumulate * accumulate
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_batches(self, generator: torch.Generator) -> torch.Tensor:
        """The epoch's global batches as sample indices ``[batches_per_epoch, global_batch]``, drawn from
        ``generator`` (seeded with ``seed + epoch``): here a shuffle of every sample."""
        order = torch.randperm(self.size, generator=generator)
        return order[: self.batches_per_epoch * self.global_batch].view(self.batches_per_epoch, self.global_batch)

    def __iter__(self) -> Iterator[int]:
        batches = self.epoch_batches(torch.Generator().manual_seed(self.seed + self.epoch))
        mine = batches[self.start_batch :, self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        for batch in mine:  # rank r takes the r-th batch_size columns of every global batch
            yield from batch.tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class WithIndex(Dataset):
    """``dataset[i]`` followed by ``i``: the sample index travels with its batch, so per-sample
    randomness can be keyed by it (see :func:`facetrain.data.transforms.sample_uniform`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.dataset[index], index)
