"""Global-batch statistics for stateful heads: the same state on every rank, equal to one process's."""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank concatenated along dim 0 in rank order (detached; itself on one process).

    Every rank must pass the same shape (the trainer drops the last partial batch).
    """
    tensor = tensor.detach()
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
