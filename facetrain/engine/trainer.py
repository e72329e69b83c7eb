"""The training loop: one readable class, the same for every backbone and head."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from facetrain.data.sampler import ResumableDistributedSampler
from facetrain.data.transforms import normalize, random_hflip
from facetrain.engine.checkpoint import rng_state, save_checkpoint, set_rng_state
from facetrain.engine.distributed import DistInfo, all_gather_objects, barrier
from facetrain.engine.model import FaceModel
from facetrain.eval.callback import VerificationCallback

log = logging.getLogger("facetrain")


@dataclass
class TrainerSettings:
    """Plain settings the trainer needs (built from the config by ``facetrain.train``)."""

    run_dir: Path
    total_steps: int
    batch_size: int
    seed: int
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # None = fp32
    grad_clip: Optional[float]
    log_every: int
    num_workers: int
    hflip: float
    channels_last: bool
    checkpoint_every: int
    keep_last: int
    eval_every: int
    eval_at_start: bool
    progress_bar: bool
    config: dict[str, Any]  # resolved config, saved in every checkpoint


class Trainer:
    """Trains ``model`` on ``dataset``; checkpoints, evaluates and logs from rank 0."""

    def __init__(
        self,
        model: FaceModel,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        dataset: Dataset,
        settings: TrainerSettings,
        dist: DistInfo,
        evaluator: Optional[VerificationCallback] = None,
    ) -> None:
        self.s, self.dist, self.evaluator = settings, dist, evaluator
        self.model = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler(settings.device.type, enabled=settings.amp_dtype == torch.float16)
        self.ddp: nn.Module = model
        if dist.enabled:
            device_ids = [settings.device.index] if settings.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
        self.sampler = ResumableDistributedSampler(len(dataset), settings.batch_size, dist.rank, dist.world_size, settings.seed)
        if self.sampler.batches_per_epoch == 0:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one global batch of "
                             f"{settings.batch_size * dist.world_size}")
        self.loader = DataLoader(
            dataset, batch_size=settings.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=settings.num_workers, pin_memory=settings.device.type == "cuda",
            persistent_workers=settings.num_workers > 0,
        )
        self.flip_generator = torch.Generator(device=settings.device)
        self.step = 0
        self.best: dict[str, dict[str, float]] = {}
        self.last_val: dict[str, dict[str, float]] = {}
        self.last_loss: Optional[float] = None
        self.writer: Optional[SummaryWriter] = None

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the final metrics (also written to ``metrics.json``)."""
        resumed = self.step > 0
        if self.dist.is_main:
            self.writer = SummaryWriter(self.s.run_dir / "tensorboard", purge_step=self.step if resumed else None)
        if not resumed and self.s.eval_at_start:
            self.evaluate()
        progress = tqdm(total=self.s.total_steps, initial=self.step, disable=not (self.dist.is_main and self.s.progress_bar),
                        dynamic_ncols=True, desc="train")
        loss_sum = torch.zeros((), device=self.s.device)
        window_start, window_steps = time.perf_counter(), 0
        self.model.train()
        while self.step < self.s.total_steps:
            epoch = self.step // self.steps_per_epoch
            self.sampler.set_epoch(epoch, self.step % self.steps_per_epoch)
            for images, labels in self.loader:
                loss_sum += self.train_step(images, labels)
                self.step += 1
                window_steps += 1
                progress.update(1)
                if self.step % self.s.log_every == 0 or self.step == self.s.total_steps:
                    elapsed = time.perf_counter() - window_start
                    self.log_train(loss_sum / window_steps, window_steps, elapsed, progress)
                    loss_sum.zero_()
                    window_start, window_steps = time.perf_counter(), 0
                done = self.step == self.s.total_steps
                if self.s.eval_every > 0 and self.step % self.s.eval_every == 0 or done:
                    self.evaluate()
                if self.s.checkpoint_every > 0 and self.step % self.s.checkpoint_every == 0 or done:
                    self.save()
                if done:
                    break
        progress.close()
        metrics = self.metrics()
        if self.writer is not None:
            self.writer.close()
        return metrics

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the loss as a device tensor (no host sync)."""
        device = self.s.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        self.flip_generator.manual_seed(hash((self.s.seed, self.dist.rank, self.step)) & (2**63 - 1))
        images = normalize(random_hflip(images, self.flip_generator, self.s.hflip))
        if self.s.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(device.type, dtype=self.s.amp_dtype) if self.s.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            output = self.ddp(images, labels)
        self.scaler.scale(output.loss).backward()
        if self.s.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return output.loss.detach()

    # ---- logging and evaluation ---------------------------------------------------------------------
    def log_train(self, mean_loss: torch.Tensor, steps: int, elapsed: float, progress: tqdm) -> None:
        if not self.dist.is_main:
            return
        self.last_loss = float(mean_loss)  # the only host sync, once per log interval
        lr = self.optimizer.param_groups[0]["lr"]
        throughput = steps * self.s.batch_size * self.dist.world_size / max(elapsed, 1e-9)
        epoch = self.step / self.steps_per_epoch
        progress.set_postfix(loss=f"{self.last_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{throughput:.0f}", refresh=False)
        log.info(f"step {self.step}/{self.s.total_steps} epoch {epoch:.2f} loss {self.last_loss:.4f} "
                 f"lr {lr:.3e} {throughput:.1f} img/s")
        assert self.writer is not None
        self.writer.add_scalar("train/loss", self.last_loss, self.step)
        self.writer.add_scalar("train/lr", lr, self.step)
        self.writer.add_scalar("train/throughput", throughput, self.step)
        self.writer.add_scalar("train/epoch", epoch, self.step)

    def evaluate(self) -> None:
        """Verification on rank 0 (the other ranks wait), logged and written to ``metrics.json``."""
        if self.dist.is_main and self.evaluator is not None:
            results = self.evaluator(self.model.backbone)
            self.last_val = results
            for name, result in results.items():
                if result["accuracy"] > self.best.get(name, {}).get("accuracy", -1.0):
                    self.best[name] = {"accuracy": result["accuracy"], "step": self.step}
                assert self.writer is not None
                self.writer.add_scalar(f"val/{name}/accuracy", result["accuracy"], self.step)
                self.writer.add_scalar(f"val/{name}/best_accuracy", self.best[name]["accuracy"], self.step)
                log.info(f"step {self.step} val {name}: accuracy {result['accuracy']:.4f} +- {result['std']:.4f} "
                         f"({result['pairs']} pairs, best {self.best[name]['accuracy']:.4f})")
            self.write_metrics()
        barrier()

    def metrics(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "train_loss": self.last_loss,
            "val": {name: {"accuracy": r["accuracy"], "std": r["std"]} for name, r in self.last_val.items()},
            "best": self.best,
        }

    def write_metrics(self) -> None:
        if self.dist.is_main:
            (self.s.run_dir / "metrics.json").write_text(json.dumps(self.metrics(), indent=2) + "\n")

    # ---- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.model.backbone.state_dict(),
            "head": self.model.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "batch_in_epoch": self.step % self.steps_per_epoch,
            "sampler_seed": self.s.seed,
            "best": self.best,
            "last_val": self.last_val,
            "last_loss": self.last_loss,
            "world_size": self.dist.world_size,
            "config": self.s.config,
        }

    def save(self) -> None:
        """Checkpoint on rank 0, with every rank's random state."""
        rng = all_gather_objects(rng_state())
        if self.dist.is_main:
            path = save_checkpoint({**self.state_dict(), "rng": rng}, self.s.run_dir / "checkpoints", self.step, self.s.keep_last)
            log.info(f"step {self.step} saved {path}")
            self.write_metrics()
        barrier()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        self.model.backbone.load_state_dict(state["backbone"])
        self.model.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.best, self.last_val, self.last_loss = state["best"], state["last_val"], state["last_loss"]
        if state["world_size"] == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank])
