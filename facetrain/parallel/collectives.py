"""Collectives the heads use: global-batch statistics, gathers and reductions that carry gradients,
the distributed cross-entropy, and how class rows are split over ranks.

Gradient convention of the sharded head: its loss is the loss of the global batch, the same value on
every rank, and each rank's backward produces the part of the gradient that flows through its own
computation. A tensor that every rank uses for different work (the gathered embeddings, the target
scores) therefore sums the gradients of all ranks on the way back.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist

_batch_is_global = False


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def global_batch() -> Iterator[None]:
    """Inside, heads already see the batch of every rank: :func:`gather_batch` returns its input."""
    global _batch_is_global
    previous, _batch_is_global = _batch_is_global, True
    try:
        yield
    finally:
        _batch_is_global = previous


@torch.no_grad()
def gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank concatenated along dim 0 in rank order (detached; itself on one process
    or inside :func:`global_batch`).

    Every rank must pass the same shape (the trainer drops the last partial batch).
    """
    tensor = tensor.detach()
    if world_size() == 1 or _batch_is_global:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = len(tensor)
        return gather_batch(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[rank() * ctx.rows:(rank() + 1) * ctx.rows]


class _SumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated in rank order; the gradient returning to each rank's part
    is the sum of every rank's gradient for it."""
    return tensor if world_size() == 1 else _GatherWithGrad.apply(tensor)


def sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks; its gradient is summed over ranks as well."""
    return tensor if world_size() == 1 else _SumWithGrad.apply(tensor)


def sum_of_replicated(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks, for a result every rank uses alike (the final loss): the
    gradient returns to each rank's ``tensor`` unchanged."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return tensor + (total - tensor.detach())


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits split by columns over ranks. ``column`` is the target's column in
    this rank's slice where ``owned``; rows whose target lives elsewhere have no target here."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, column: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
        multi = world_size() > 1
        with torch.no_grad():
            top = logits.amax(dim=1, keepdim=True) if logits.shape[1] else logits.new_full((len(logits), 1), -torch.inf)
            if multi:
                dist.all_reduce(top, op=dist.ReduceOp.MAX)
            probabilities = (logits - top).exp_()
            total = probabilities.sum(dim=1, keepdim=True)
            target = torch.where(owned, logits.gather(1, column), 0.0)
            if multi:
                dist.all_reduce(total)
                dist.all_reduce(target)
            probabilities /= total
        ctx.save_for_backward(probabilities, column, owned)
        return (total.log() + top - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        probabilities, column, owned = ctx.saved_tensors
        grad_logits = probabilities.scatter_add(1, column, -owned.to(probabilities.dtype))
        return grad_logits * (grad / len(probabilities)), None, None


def distributed_cross_entropy(logits: torch.Tensor, column: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the global batch from this rank's columns of its logits (max, sum of
    exponentials and target logit reduced over ranks); equals ``F.cross_entropy`` on one process."""
    return _DistributedCrossEntropy.apply(logits, column.view(-1, 1), owned.view(-1, 1))


# ---- how classes are split --------------------------------------------------------------------
@dataclass(frozen=True)
class ClassPartition:
    """``num_classes`` split over ``world_size`` ranks in contiguous blocks, the remainder spread over
    the first ranks (``num_classes // world_size`` or one more each)."""

    num_classes: int
    world_size: int

    def count(self, rank: int) -> int:
        return self.num_classes // self.world_size + int(rank < self.num_classes % self.world_size)

    def start(self, rank: int) -> int:
        return self.num_classes // self.world_size * rank + min(rank, self.num_classes % self.world_size)


@dataclass(frozen=True)
class RowShard:
    """This rank's rows of a per-class tensor: ``rows_per_class`` rows for each of its classes."""

    partition: ClassPartition
    rank: int
    rows_per_class: int

    def rows(self, rank: int) -> tuple[int, int]:
        """``(first row, number of rows)`` of ``rank``."""
        k = self.rows_per_class
        return self.partition.start(rank) * k, self.partition.count(rank) * k

    def slice(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the whole tensor."""
        first, count = self.rows(self.rank)
        return full[first:first + count]

    @torch.no_grad()
    def gather(self, local: torch.Tensor) -> Optional[torch.Tensor]:
        """The whole tensor on rank 0 (on the CPU, one rank's rows at a time through the device), None
        on the other ranks. Every rank must call it."""
        if self.partition.world_size == 1:
            return local.detach()
        if self.rank != 0:
            dist.send(local.detach().contiguous(), 0)
            return None
        parts = [local.detach().cpu()]
        for source in range(1, self.partition.world_size):
            part = local.new_empty((self.rows(source)[1], *local.shape[1:]))
            dist.recv(part, source)
            parts.append(part.cpu())
        return torch.cat(parts)
