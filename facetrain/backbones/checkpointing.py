"""Activation checkpointing for backbones built of blocks (``backbone.activation_checkpointing``)."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from facetrain.errors import ConfigError


@contextlib.contextmanager
def batch_norm_statistics_kept(block: nn.Module) -> Iterator[None]:
    """Batch norm layers of ``block`` normalise as usual but leave their running statistics (and batch
    count) as they were: the recomputed forward pass of a checkpointed block must not count the batch twice."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """``x`` through ``blocks`` in order; with ``checkpointed`` (and gradients on), each block's activations
    are dropped after the forward pass and recomputed in the backward: memory for the activations of one
    block at a time, about one more forward pass of compute. The recomputation leaves batch norm's running
    statistics alone, so they end as without checkpointing."""
    recompute = checkpointed and torch.is_grad_enabled()
    for block in blocks:
        if recompute:
            x = checkpoint(block, x, use_reentrant=False,
                           context_fn=lambda block=block: (contextlib.nullcontext(), batch_norm_statistics_kept(block)))
        else:
            x = block(x)
    return x


def refuse_checkpointing(backbone: str, requested: bool) -> None:
    """A ConfigError when activation checkpointing is asked of a backbone that does not offer it."""
    if requested:
        raise ConfigError(f"backbone.activation_checkpointing=true is not offered by {backbone}",
                          "use it with the IResNet (r*), IR (ir_*), ViT (vit_*) or timm backbones, or drop it")
