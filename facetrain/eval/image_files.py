"""Image files read for evaluation in DataLoader workers: decoded, prepared to 112x112, in order.

An unreadable file does not stop a worker: its item carries the reason, and the caller decides
(IJB evaluation stops, feature extraction skips and warns).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from facetrain.cores import capped_workers
from facetrain.data.images import decode_image, resize_square
from facetrain.data.imagefolder import PackedStrings
from facetrain.errors import DataError

Prepare = Callable[[np.ndarray, int], np.ndarray]  # (decoded RGB image, index) -> uint8 [size, size, 3]


class ImageFiles(Dataset):
    """``(image uint8 [size,size,3], index, error)`` of the files ``base/<name>``, read by ``decode`` (raw
    photos: :func:`facetrain.data.images.decode_photo`); ``prepare`` turns a decoded image into the model's
    input (default: resized to ``size x size``). An error of ``prepare`` names the file."""

    def __init__(self, base: Path, names: Sequence[str], prepare: Optional[Prepare] = None, size: int = 112,
                 decode: Callable[[bytes, str], np.ndarray] = decode_image) -> None:
        self.base, self.names, self.prepare, self.size, self.decode = base, PackedStrings(names), prepare, size, decode

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> Path:
        return self.base / self.names[index]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        path = self.path(index)
        try:
            image = self.decode(path.read_bytes(), str(path))
        except OSError as exc:
            return np.zeros((self.size, self.size, 3), np.uint8), index, f"{path} cannot be read ({exc.strerror or exc})"
        except DataError as exc:
            return np.zeros((self.size, self.size, 3), np.uint8), index, exc.problem
        try:
            return (self.prepare(image, index) if self.prepare else resize_square(image, self.size)), index, ""
        except DataError as exc:
            return np.zeros((self.size, self.size, 3), np.uint8), index, f"{path}: {exc.problem}"


def load_images(dataset: ImageFiles, batch_size: int, workers: int,
                pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Batches ``(images uint8 [B,size,size,3], indices [B], errors)`` in dataset order."""
    workers = capped_workers(workers)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    yield from loader


def default_workers() -> int:
    """DataLoader workers for evaluation: the CPU cores this process may use, at most 8."""
    return capped_workers(8)
