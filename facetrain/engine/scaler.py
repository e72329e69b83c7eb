"""Loss scaling and skipped steps: torch's GradScaler, with one skip decision for every rank.

A step whose gradients hold a NaN or Inf is skipped on the device: the scaler's found-inf flag tells
the optimizer (the fused kernels read it on the device; the unfused path asks the host). With a sharded
head each rank holds other rows of the class centres, so an overflow may appear on one rank only, and
all ranks must agree to skip. torch's ``ShardedGradScaler`` agrees by *summing* the flags, which gives
``world_size`` when every rank overflows (the backbone's gradients are the same on every rank after
DDP): torch's fused SGD and Adam(W) skip only when the flag is exactly 1, so they applied the step with
Inf gradients, and its 1-element flag does not broadcast into fused Adam's 0-d step counter. Here the
flag is the *maximum* over the ranks, a 0-d tensor that is 0 or 1.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


class AgreedGradScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` whose found-inf flag is 1 on every rank as soon as one rank found a
    NaN/Inf gradient (an all-reduce of one number on the device, no host sync).

    ``last_found_inf`` is that flag (0-d, 0 or 1) from the latest :meth:`unscale_`, for counting skipped
    steps; None before the first.
    """

    def __init__(self, device: str, init_scale: float, growth_interval: int) -> None:
        super().__init__(device, init_scale=init_scale, growth_interval=growth_interval)
        self.last_found_inf: Optional[torch.Tensor] = None

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        super().unscale_(optimizer)
        if not self.is_enabled():
            return
        flags = self._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
        if dist.is_initialized() and dist.get_world_size() > 1:
            for flag in flags.values():
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.last_found_inf = torch.stack([flag.to(self._scale.device) for flag in flags.values()]).amax()


def build_grad_scaler(device: torch.device, dynamic: bool, growth_interval: int) -> tuple[AgreedGradScaler, Optional[float]]:
    """The run's scaler and the fixed scale to pass to ``update`` (None when ``dynamic``).

    ``dynamic`` (fp16): the loss is scaled from 2^16, halved on every overflow and doubled after
    ``growth_interval`` clean steps. Otherwise (fp32, bf16) the scale stays 1 and the scaler only finds
    NaN/Inf gradients, so that step is skipped.
    """
    scaler = AgreedGradScaler(device.type, init_scale=2.0**16 if dynamic else 1.0, growth_interval=growth_interval)
    return scaler, None if dynamic else 1.0
