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

import logging
from typing import Any, Optional

import torch
import torch.distributed as dist

log = logging.getLogger("facetrain")


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


_PRECISIONS = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def precision_name(amp_dtype: Optional[torch.dtype]) -> str:
    """``fp32``, ``fp16`` or ``bf16`` for an autocast dtype (None: no autocast), as checkpoints record it."""
    return _PRECISIONS[amp_dtype]


def saved_precision(state: dict[str, Any]) -> str:
    """The precision a checkpoint's run trained in: recorded, or for an older checkpoint told from its
    scaler's state: a scale of exactly 1 that never grew is the fixed scale of fp32 and bf16 ("fp32 or bf16");
    anything else is fp16's dynamic scale."""
    if "precision" in state:
        return state["precision"]
    scaler = state.get("scaler") or {}
    fixed = not scaler or (scaler["scale"] == 1.0 and scaler["_growth_tracker"] == 0)
    return "fp32 or bf16" if fixed else "fp16"


def load_scaler_state(scaler: AgreedGradScaler, state: dict[str, Any], precision: str) -> None:
    """Continue a checkpoint's loss scale when its run scaled the loss as this run's ``precision`` does (fp16
    dynamically, fp32 and bf16 at a fixed 1); otherwise keep ``scaler`` as built and say so. fp16 resumed
    from bf16 or fp32 would keep their scale of 1 (small gradients underflow for about a thousand steps
    while it grows); bf16 or fp32 resumed from fp16 would scale their first step by fp16's scale."""
    saved = saved_precision(state)
    if (saved == "fp16") == (precision == "fp16"):
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        return
    log.info(f"resume: the checkpoint was trained in {saved}, this run in {precision}: the loss scale starts afresh "
             f"at {scaler.get_scale():g}" + (" (fixed)" if precision != "fp16" else "")
             + (f", not the saved {state['scaler']['scale']:g}" if state["scaler"] else ""))
