"""Synchronised batch normalisation (``trainer.sync_bn``): batch statistics over every rank's batch.

On GPUs this is torch's :class:`~torch.nn.SyncBatchNorm`. torch's refuses CPU tensors, so on the CPU
(gloo) :class:`GlobalBatchNorm` computes the same thing with two all-reduces per layer: the global mean,
then the global biased variance (two passes, as ``F.batch_norm``), both carrying gradients.
"""
from __future__ import annotations

import torch
from torch import nn

from facetrain.parallel.collectives import sum_with_grad, world_size


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the concatenation of every rank's batch (any input rank: ``[N, C, ...]``).

    Equals one process's ``BatchNorm`` on the concatenated batch, running statistics included (the
    unbiased variance of the global batch). Every rank must pass the same batch size.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1, *[1] * (input.dim() - 2)]
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        count = x.numel() // x.shape[1] * world_size()
        mean = sum_with_grad(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = sum_with_grad(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * count / max(count - 1, 1)).to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _convert(module: nn.Module) -> nn.Module:
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        for name, child in module.named_children():
            module.add_module(name, _convert(child))
        return module
    converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
    if module.affine:
        converted.weight, converted.bias = module.weight, module.bias
    if module.track_running_stats:
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
    return converted


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every batch-norm layer synchronised over ranks (torch's on CUDA, ours elsewhere).

    The parameters and buffers are the same tensors; convert before building the optimizer.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)
