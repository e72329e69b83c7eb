"""Checkpoint layout of rank-local tensors (a sharded head's rows and their optimizer state): saved
whole, as one process would hold them, and cut into this rank's rows on load, so a run can resume on
any number of processes."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from facetrain.parallel.collectives import RowShard


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The optimizer's parameters in the order of its ``state_dict`` indices."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(optimizer: torch.optim.Optimizer, shards: Mapping[int, RowShard]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with the row-shaped state of rank-local parameters (``id(p)`` in
    ``shards``) gathered whole on rank 0 (the other ranks' copies hold None there). Every rank must call it."""
    state = optimizer.state_dict()
    packed = dict(state["state"])
    for index, p in enumerate(_parameters(optimizer)):
        shard = shards.get(id(p))
        if shard is None or index not in packed:
            continue
        packed[index] = {key: shard.gather(value) if torch.is_tensor(value) and value.shape == p.shape else value
                         for key, value in packed[index].items()}
    return {**state, "state": packed}


def shard_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                          shards: Mapping[int, RowShard]) -> dict[str, Any]:
    """This rank's part of a state saved by :func:`full_optimizer_state` (by any world size)."""
    packed = dict(state["state"])
    for index, p in enumerate(_parameters(optimizer)):
        shard = shards.get(id(p))
        if shard is None or index not in packed:
            continue
        rows = shard.partition.num_classes * shard.rows_per_class
        packed[index] = {key: shard.slice(value) if torch.is_tensor(value) and value.dim() and value.shape[0] == rows
                         else value for key, value in packed[index].items()}
    return {**state, "state": packed}
