"""Batch-level input processing done on the device: uint8 in, normalised float out."""
from __future__ import annotations

import torch


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N,3,H,W]`` -> float ``(x/255 - 0.5) / 0.5`` in [-1, 1] (the backbone contract)."""
    return images.float().div_(127.5).sub_(1.0)


def random_hflip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image horizontally with probability ``p``, drawn from ``generator`` (reproducible)."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < p
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(3), images)
