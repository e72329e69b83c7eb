"""Optimizers and per-iteration learning-rate schedules, built by config name."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from facetrain.registry import Registry

log = logging.getLogger("facetrain")

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("scheduler")


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, lr: float, weight_decay: float, momentum: float, nesterov: bool, fused: bool = False) -> torch.optim.Optimizer:
    """torch's SGD (no dampening). Fused, its momentum buffers start as zeros here, before the first step.

    torch's fused SGD makes them with ``empty_like`` at its first step and fills them inside the kernel;
    when that step is skipped (a NaN/Inf gradient, routine for an fp16 start) the kernel returns early
    and the uninitialised memory became the momentum of every later step. Zeros give the first step
    exactly the unfused result (``buf = momentum * 0 + grad = grad``, without dampening) and survive a skip.
    """
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                fused=fused or None)
    if fused and momentum:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, lr: float, weight_decay: float, betas: list[float], eps: float, fused: bool = False) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=fused or None)


def parameter_groups(model: nn.Module, no_decay_norm_bias: bool, lr_scales: dict[str, float]) -> list[dict[str, Any]]:
    """``model``'s parameters in groups of one learning-rate scale (``lr_scales``: a parameter-name prefix,
    e.g. ``backbone``, -> a factor of the lr; 1 for the rest) and, with ``no_decay_norm_bias``, without weight
    decay for biases, normalisation and other 1-D weights and the names in ``model.no_weight_decay()``."""
    exempt = model.no_weight_decay() if no_decay_norm_bias and hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        scale = next((factor for prefix, factor in lr_scales.items()
                      if name == prefix or name.startswith(prefix + ".")), 1.0)
        decays = not (no_decay_norm_bias and (p.dim() <= 1 or name in exempt))
        groups.setdefault((scale, decays), []).append(p)
    return [{"params": params, "lr_scale": scale, **({} if decays else {"weight_decay": 0.0})}
            for (scale, decays), params in groups.items()]


def build_optimizer(params: Union[nn.Module, Iterable], name: str, fused: bool = False, global_batch: Optional[int] = None,
                    reference_batch: Optional[int] = None, no_decay_norm_bias: bool = False,
                    lr_scales: Optional[dict[str, float]] = None, **hparams: Any) -> torch.optim.Optimizer:
    """The optimizer registered as ``name`` over a model's parameters (or ``params`` as given); ``fused``
    picks the single-kernel implementation. For a model, :func:`parameter_groups` applies
    ``no_decay_norm_bias`` and the per-part ``lr_scales``.

    With ``reference_batch`` (``optimizer.reference_batch``), ``lr`` is scaled to ``global_batch`` (images
    per optimizer step) by :func:`scaled_lr`. Parameters with a row-sparse gradient are stepped on those
    rows only (:func:`step_sparse_rows`).
    """
    if reference_batch is not None:
        if global_batch is None:
            raise ValueError("optimizer.reference_batch is set: build_optimizer needs the run's global_batch")
        hparams["lr"] = scaled_lr(hparams["lr"], global_batch, reference_batch)
    if isinstance(params, nn.Module):
        groups = parameter_groups(params, no_decay_norm_bias, lr_scales or {})
        params = [{**group, "lr": hparams["lr"] * group["lr_scale"]} for group in groups]
    elif no_decay_norm_bias or lr_scales:
        raise ValueError("no_decay_norm_bias and lr_scales need the model, to name its parameters")
    optimizer = OPTIMIZERS.get(name)(params, fused=fused, **hparams)
    step_sparse_rows(optimizer)
    return optimizer


def step_sparse_rows(optimizer: torch.optim.Optimizer) -> None:
    """Make ``optimizer`` update a parameter whose gradient is row-sparse on the rows present only.

    Partial FC reads the sampled class centres with a row-sparse gradient (see
    :meth:`facetrain.heads.base.Head.class_rows`). Around each step the parameter, its gradient and its
    row-shaped optimizer state (momentum, Adam's moments) are narrowed to those rows, stepped by the
    unchanged optimizer, and written back. Rows not sampled get no gradient, no weight decay, and their
    momentum is neither decayed nor applied: they are exactly as if the step had not happened, as in
    insightface's first Partial FC (which kept per-row momentum outside the optimizer). arcface_torch's
    PartialFC_V2 instead gives them a zero gradient and lets SGD keep moving them with their decaying
    momentum and weight decay. Shared state (Adam's step count) advances with every step.
    """
    narrowed: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []

    def narrow(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> Optional[Any]:
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is None or not p.grad.is_sparse:
                    continue
                grad = p.grad.coalesce()
                rows, whole = grad.indices()[0], p.data
                state = opt.state.get(p, {})
                whole_state = {key: value for key, value in state.items()
                               if torch.is_tensor(value) and value.shape == whole.shape}
                narrowed.append((p, whole, rows, grad, whole_state))
                p.data = whole.index_select(0, rows)
                p.grad = grad.values()
                for key, value in whole_state.items():
                    state[key] = value.index_select(0, rows)
        return None

    def widen(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        while narrowed:
            p, whole, rows, grad, whole_state = narrowed.pop()
            state = opt.state[p]
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.data.shape:
                    target = whole_state.get(key)
                    state[key] = (torch.zeros_like(whole) if target is None else target).index_copy_(0, rows, value)
            p.data = whole.index_copy_(0, rows, p.data)
            p.grad = grad

    optimizer.register_step_pre_hook(narrow)
    optimizer.register_step_post_hook(widen)


def scaled_lr(lr: float, global_batch: int, reference_batch: Optional[int]) -> float:
    """The linear scaling rule (Goyal et al., 2017): ``lr`` is given for ``reference_batch`` images per
    optimizer step, so a run with ``global_batch`` images per step uses ``lr * global_batch / reference_batch``.
    ``reference_batch=None`` leaves ``lr`` as given."""
    return lr if reference_batch is None else lr * global_batch / reference_batch


def _warmup(factor: Callable[[int], float], warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up from 0 over ``warmup_steps``, then ``factor(step)``."""

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return factor(step)

    return lr_factor


@SCHEDULES.register("poly")
def poly(total_steps: int, warmup_steps: int, steps_per_epoch: int, power: float) -> Callable[[int], float]:
    """arcface_torch's PolyScheduler: ``(1 - (step - warmup) / (total - warmup)) ** power``."""
    decay_steps = max(1, total_steps - warmup_steps)
    return _warmup(lambda step: max(0.0, 1 - (step - warmup_steps) / decay_steps) ** power, warmup_steps)


@SCHEDULES.register("multistep")
def multistep(total_steps: int, warmup_steps: int, steps_per_epoch: int, milestones: list[float], gamma: float) -> Callable[[int], float]:
    """``gamma ** (number of milestones passed)``, milestones in epochs."""
    boundaries = sorted(round(m * steps_per_epoch) for m in milestones)
    return _warmup(lambda step: gamma ** sum(step >= b for b in boundaries), warmup_steps)


@SCHEDULES.register("cosine")
def cosine(total_steps: int, warmup_steps: int, steps_per_epoch: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Half-cosine from 1 to ``min_lr_ratio`` over the steps after warm-up."""
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _warmup(factor, warmup_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int, steps_per_epoch: int, warmup_epochs: float, **hparams: Any
) -> LambdaLR:
    """A per-iteration ``LambdaLR`` for the schedule ``name``; positions are given in epochs."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    factor = SCHEDULES.get(name)(total_steps, warmup_steps, steps_per_epoch, **hparams)
    return LambdaLR(optimizer, factor)


def restore_configured_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: LambdaLR,
                                       configured: list[dict[str, Any]]) -> None:
    """Put back the hyperparameters this run's config gave each param group (``configured``), which
    loading a checkpoint's optimizer state replaced with the saved ones: a resumed run honours
    ``optimizer.lr=...`` (and weight decay, momentum, betas) on its command line, logging each change.
    The schedule goes on from its step (``scheduler.last_epoch``): the lr becomes the configured base lr
    times the schedule's factor there."""
    for group, hyperparameters in zip(optimizer.param_groups, configured):
        for key, value in hyperparameters.items():
            if key != "lr" and group.get(key) != value:  # initial_lr: the base lr the schedule scales
                log.info(f"resume: optimizer {'lr' if key == 'initial_lr' else key} {group.get(key)} -> {value} "
                         "(this run's config)")
        group.update(hyperparameters)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
