"""Batch-level input processing done on the device: uint8 in, normalised float out.

Random augmentation is keyed by ``(seed, epoch, sample index)`` through a counter-based hash, never
by a generator's position, so a sample is augmented alike on any rank, in any batch, and after a
resume (which is what makes a resumed run bit-identical to an uninterrupted one).
"""
from __future__ import annotations

from typing import TypeVar

import torch

_MASK = 0xFFFFFFFF
_Int = TypeVar("_Int", int, torch.Tensor)


# What every facetrain backbone takes: RGB, normalised as (x/255 - mean) / std; recorded in checkpoints.
INPUT_CONVENTION = {"channel_order": "RGB", "mean": 0.5, "std": 0.5}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N,3,H,W]`` -> float ``(x/255 - 0.5) / 0.5`` in [-1, 1] (the backbone contract)."""
    return images.float().div_(127.5).sub_(1.0)


def _mul32(x: _Int, c: int) -> _Int:
    """``x * c mod 2**32`` without int64 overflow (``c`` split into 16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK


def _hash32(x: _Int) -> _Int:
    """lowbias32 (C. Wellons): a well-mixed 32-bit integer hash, for Python ints and int64 tensors."""
    x = x & _MASK
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_uniform(seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """One float in [0, 1) per sample index, a function of ``(seed, epoch, index)`` only."""
    key = _hash32(_hash32(seed & _MASK) ^ (epoch & _MASK))
    return (_hash32(indices.long() ^ key) >> 8).float() / float(1 << 24)


def random_hflip(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int, p: float = 0.5) -> torch.Tensor:
    """Flip image ``i`` horizontally when ``sample_uniform(seed, epoch, indices[i]) < p``."""
    flip = (sample_uniform(seed, epoch, indices.to(images.device)) < p).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(3), images)
