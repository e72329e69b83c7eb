"""A tiny model, dataset and Trainer laid out as ``train.py`` builds them, for in-process and gloo tests."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from facetrain.runs.checkpoint import load_newest_valid
from facetrain.parallel.groups import DistInfo
from facetrain.engine.optim import build_optimizer, build_scheduler
from facetrain.engine.settings import TrainerSettings
from facetrain.engine.trainer import Trainer
from facetrain.heads import build_head
from facetrain.train import build_model

IMAGES, CLASSES, GLOBAL_BATCH = 48, 6, 12
OPTIMIZERS = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False},
              "adamw": {"lr": 0.01, "weight_decay": 0.1, "betas": [0.9, 0.999], "eps": 1e-8}}


class Faces(Dataset):
    """``images`` (48) random 3x6x6 images of ``classes`` identities."""

    def __init__(self, classes: int = CLASSES, images: int = IMAGES) -> None:
        self.images = torch.randint(0, 256, (images, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.classes = classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.label_of(index)

    def label_of(self, index: int) -> int:
        return index % self.classes


def backbone(batch_norm: bool) -> nn.Module:
    norm = (lambda n, d: (nn.BatchNorm2d(n) if d == 2 else nn.BatchNorm1d(n))) if batch_norm else (lambda n, d: nn.Identity())
    return nn.Sequential(nn.Conv2d(3, 4, 3), norm(4, 2), nn.PReLU(4), nn.Flatten(), nn.Linear(64, 8), norm(8, 1))


def make_trainer(run_dir: Path, world_size: int = 1, rank: int = 0, total_steps: int = 6, batch_norm: bool = True,
                 sharded: bool = True, sync_bn: bool = True, grad_accum: int = 1, checkpoint_every: int = 0,
                 optimizer: str = "sgd", fused: bool = False, sample_rate: float = 1.0, classes: int = CLASSES,
                 amp_dtype: Optional[torch.dtype] = None, growth_interval: int = 100, epochs: Optional[int] = None,
                 global_batch: int = GLOBAL_BATCH, loss: str = "arcface", images: int = IMAGES,
                 max_steps: Optional[int] = None, terms: Optional[dict[str, nn.Module]] = None, **head_args) -> Trainer:
    """The CLI's layout (``build_model``, ``build_optimizer``) on a tiny model and ``images`` images;
    ``global_batch`` images per optimizer step. The schedule is ``1 / (1 + step)`` over ``total_steps``, or
    with ``max_steps`` or ``epochs`` the poly schedule (power 2, one epoch of warm-up) over that many steps
    or epochs, as ``build_trainer`` makes it. ``terms``: extra loss terms of the model (a distillation)."""
    torch.manual_seed(0)
    head_args = head_args or {"s": 16.0, "m": 0.3}
    build = lambda n: build_head(loss, 8, n, **head_args)  # noqa: E731
    dist = DistInfo(rank, rank, world_size)
    model = build_model(backbone(batch_norm), build(classes), build, sharded, sample_rate, sync_bn, dist, torch.device("cpu"),
                        terms)
    opt = build_optimizer(model.parameters(), optimizer, fused=fused, **OPTIMIZERS[optimizer])
    if epochs is None and max_steps is None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    else:
        steps_per_epoch = images // global_batch
        total_steps = max_steps or epochs * steps_per_epoch
        scheduler = build_scheduler(opt, "poly", total_steps, steps_per_epoch, warmup_epochs=1.0, power=2.0)
    settings = TrainerSettings(
        run_dir=run_dir, total_steps=total_steps, batch_size=global_batch // world_size // grad_accum, seed=0,
        device=torch.device("cpu"), amp_dtype=amp_dtype, grad_clip=5.0, log_every=1, num_workers=0, hflip=0.5,
        channels_last=False, checkpoint_every=checkpoint_every, keep_last=0, save_best=False, best_metric=None,
        max_nonfinite=3, eval_every=0, eval_at_start=False, progress_bar=False, config={}, grad_accum=grad_accum,
        loss_scale_growth_interval=growth_interval)
    return Trainer(model, opt, scheduler, Faces(classes, images), settings, dist)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_newest_valid(run_dir / "checkpoints")[1]
    return {**{f"backbone.{k}": v for k, v in state["backbone"].items()}, **{f"head.{k}": v for k, v in state["head"].items()}}


def assert_final_weights_close(run_dir: Path, expected: dict[str, torch.Tensor], label: str) -> None:
    """The run's final backbone and head weights equal ``expected`` (:func:`final_weights` of another run) to 1e-4."""
    for key, value in final_weights(run_dir).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-4, msg=lambda m: f"{label} {key}: {m}")


def next_tensorboard_second() -> None:
    """Wait past the current second before another writer of this process opens a run's TensorBoard folder:
    TensorBoard orders event files by name (time in seconds, then a per-process writer counter compared as text,
    so writer 10 sorts before writer 9), and two writers of one process in one second could swap (a resume in
    the same process; a resumed run of train.py is a new process, seconds later)."""
    time.sleep(1.01)
