"""The parts of a model that run in fp32 under autocast: the embedding layer and the loss head.

arcface_torch runs its backbones' body under autocast and their embedding layer (IResNet's FC and
BatchNorm1d, MobileFaceNet's last 1x1 convolution and GDC) in fp32; the margin arithmetic of every head
needs fp32 too (``cos(theta + m)`` near theta = 0 loses its margin in bf16's 8 bits of mantissa).
"""
from __future__ import annotations

import contextlib

import torch


def no_autocast(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context in which operations on ``x``'s device type run in their inputs' own dtype (nothing to do
    for shape-only ``meta`` tensors, which have no autocast)."""
    if x.device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 if it is in a lower precision (float64 stays float64, for gradient checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
