"""The training loop: one readable class, the same for every backbone and head."""
from __future__ import annotations

import contextlib
import logging
import warnings
from functools import partial
from typing import Any, Iterator, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from facetrain.data.prefetch import DevicePrefetcher
from facetrain.data.balanced import build_sampler
from facetrain.data.sampler import WithIndex
from facetrain.data.transforms import INPUT_CONVENTION, normalize, random_hflip
from facetrain.engine.finetune import matches
from facetrain.engine.model import FaceModel
from facetrain.engine.nonfinite import NonFiniteGuard
from facetrain.engine.optim import restore_configured_hyperparameters
from facetrain.engine.scaler import build_grad_scaler, load_scaler_state, precision_name
from facetrain.engine.settings import Evaluator, TrainerSettings
from facetrain.engine.train_log import TrainLog
from facetrain.engine.window import StepWindow
from facetrain.errors import ResumeError
from facetrain.parallel.groups import (DistInfo, all_gather_objects, barrier, broadcast_object, global_grad_norm,
                                       sum_gradients)
from facetrain.parallel.shards import full_optimizer_state, shard_optimizer_state
from facetrain.plural import counted
from facetrain.runs.checkpoint import (BEST_NAME, checkpoint_path, rng_state, rotate_checkpoints, save_checkpoint,
                                       set_rng_state)
from facetrain.runs.logging import Progress
from facetrain.runs.preemption import Preempted, StopRequest, ignore_stop_signals
from facetrain.runs.resume import re_express_step
from facetrain.runs.run_dir import CHECKPOINT_DIR
from facetrain.runs.trackers import Tracker, Trackers

log = logging.getLogger("facetrain")
# The schedule advances with every optimizer step, taken or skipped (a skipped first step is routine in
# fp16); torch warns when the first one was skipped, though the loop steps in the right order.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")


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
        evaluator: Optional[Evaluator] = None,
        tracker: Optional[Tracker] = None,
    ) -> None:
        self.s, self.dist, self.evaluator = settings, dist, evaluator
        # rank 0's reports; the trackers (MLflow, W&B) are told what TensorBoard is told
        self.report = TrainLog(settings.run_dir, settings.config, tracker or Trackers([]), dist.is_main, settings.device)
        self.model = model
        self.optimizer, self.scheduler = optimizer, scheduler
        # tensors holding only this rank's rows (a sharded head): outside DDP, saved whole
        self.rank_local = model.rank_local_tensors()
        parameters = dict(model.named_parameters())
        self.frozen = [p for name, p in parameters.items() if matches(name, settings.frozen)]
        self.local_params = {id(parameters[name]): shard for name, shard in self.rank_local.items() if name in parameters}
        # fp16 scales the loss dynamically; in fp32/bf16 the scale stays 1 and the scaler only finds
        # NaN/Inf gradients; either way such a step is skipped on every rank (see engine/scaler.py)
        self.scaler, self.fixed_scale = build_grad_scaler(settings.device, settings.amp_dtype == torch.float16,
                                                          settings.loss_scale_growth_interval)
        self.ddp: nn.Module = model
        if dist.enabled:
            device_ids = [settings.device.index] if settings.device.type == "cuda" else None
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(self.rank_local))
            self.ddp = DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True,
                                               bucket_cap_mb=settings.ddp_bucket_cap_mb)
            if model.head.loss_covers_global_batch:  # each rank holds a part of the gradient: sum, not average
                self.ddp.register_comm_hook(None, sum_gradients)
        self.dataset = dataset
        self.sampler = build_sampler(settings.sampler, dataset, settings.batch_size, dist.rank, dist.world_size,
                                     settings.seed, settings.grad_accum, settings.images_per_identity)
        if self.sampler.batches_per_epoch == 0:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one optimizer step's "
                             f"{settings.batch_size * dist.world_size * settings.grad_accum}")
        self.loader = DataLoader(
            WithIndex(dataset), batch_size=settings.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=settings.num_workers, pin_memory=settings.device.type == "cuda",
            persistent_workers=settings.num_workers > 0, worker_init_fn=ignore_stop_signals,
            generator=torch.Generator().manual_seed(settings.seed),  # keeps the global RNG untouched
        )
        self.step = self.epoch = self.batch = 0  # optimizer steps; position in the data (micro-batches)
        self.resumed_from: Optional[int] = None  # the checkpoint's step, in its own units
        self.micro_loss = torch.zeros((), device=settings.device)  # the current step's loss so far
        self.window = StepWindow(settings.device)  # sums since the last log line
        self.guard = NonFiniteGuard(settings.device, settings.max_nonfinite)
        self.stop = StopRequest()
        self.saved_step = -1

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch // self.s.grad_accum

    @property
    def step_batch(self) -> int:
        """Images per optimizer step: batch size x world size x ``grad_accum``."""
        return self.sampler.global_batch * self.s.grad_accum

    @property
    def epoch_position(self) -> float:
        """Epochs of data trained so far: the finished epochs plus the fraction of the current one."""
        return self.epoch + self.batch / self.sampler.batches_per_epoch

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the final metrics (also written to ``metrics.json``).

        Raises Preempted after checkpointing when SIGTERM/SIGUSR1 arrives, NonFiniteError when the
        loss stays NaN/Inf.
        """
        self.report.open(self.step, self.resumed_from)
        if self.step == 0 and self.s.eval_at_start:
            self.evaluate()
        progress = Progress(self.s.total_steps, self.steps_per_epoch, self.step, self.dist.is_main and self.s.progress_bar)
        self.model.train()
        self.window.restart_clock(self.step)
        first_step = self.step + 1
        with self.stop, self.worker_processes():
            while self.step < self.s.total_steps:
                for images, labels, indices in self.window.timed(self.epoch_batches()):
                    if not self.train_step(images, labels, indices):
                        continue  # accumulating
                    progress.advance(self.step)
                    if self.step == first_step:
                        self.report.startup(self.step)
                    if self.batch == 0:
                        self.log_epoch_end()
                    done = self.step == self.s.total_steps
                    if self.due(self.s.log_every) or done:
                        self.log_train(progress)
                        self.guard.check()
                    improved = self.evaluate() if self.due(self.s.eval_every) or done else False
                    checkpoint_due = self.due(self.s.checkpoint_every) or done
                    if checkpoint_due or improved:
                        with self.window.pause():
                            self.save(step_file=checkpoint_due, best=improved)
                    if done:
                        break
                    if (signal_name := self.stop.agreed()) is not None:
                        log.info(f"step {self.step}: {signal_name} received, saving a checkpoint and stopping")
                        self.save()
                        raise Preempted(signal_name, self.step, self.s.run_dir)
        progress.close()
        return self.report.close(self.step, self.epoch_position)

    @contextlib.contextmanager
    def worker_processes(self) -> Iterator[None]:
        """The DataLoader's (persistent) worker processes are stopped when training leaves this block, however
        it leaves: they ignore SIGTERM (:mod:`facetrain.runs.preemption`), so a process exiting on an error
        would otherwise wait for them forever."""
        try:
            yield
        finally:
            iterator = getattr(self.loader, "_iterator", None)  # torch keeps persistent workers here
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                self.loader._iterator = None

    def epoch_batches(self) -> DevicePrefetcher:
        """The rest of the current epoch's batches, already on the device (copied on a side stream
        ahead of use on CUDA; the loader's own batches on the CPU)."""
        self.start_epoch()
        return DevicePrefetcher(self.loader, self.s.device)

    def start_epoch(self) -> None:
        """Point the sampler at the current position and tell the dataset the epoch its per-sample
        augmentation is keyed by (read by DataLoader workers when the epoch's iteration starts)."""
        self.sampler.set_epoch(self.epoch, self.batch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def model_inputs(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 batch as the model takes it: on the device, flipped by (seed, epoch, index), normalised,
        in the configured memory format."""
        device = self.s.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        images = normalize(random_hflip(images, indices, self.s.seed, self.epoch, self.s.hflip))
        if self.s.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> bool:
        """Forward and backward one micro-batch; after ``grad_accum`` of them, one optimizer step. Advances
        the position in the data; returns whether it stepped. No host sync."""
        device = self.s.device
        images, labels = self.model_inputs(images, labels, indices)
        autocast = (torch.autocast(device.type, dtype=self.s.amp_dtype) if self.s.amp_dtype is not None
                    else contextlib.nullcontext())
        self.batch += 1
        stepping = self.batch % self.s.grad_accum == 0
        # DDP reduces the gradients in the last micro-batch's backward only
        no_sync = self.ddp.no_sync() if self.dist.enabled and not stepping else contextlib.nullcontext()
        with no_sync:
            with autocast:
                output = self.ddp(images, labels, indices)
            loss = output.loss / self.s.grad_accum
            self.scaler.scale(loss).backward()
        self.micro_loss += loss.detach()
        self.window.add_micro_batch(output.diagnostics, 1.0 / self.s.grad_accum)
        if self.batch == self.sampler.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        if stepping:
            self.optimizer_step()
        return stepping

    def optimizer_step(self) -> None:
        """Step the optimizer and the schedule on the accumulated gradients, and count the step."""
        if self.s.frozen_steps is None or self.step < self.s.frozen_steps:
            for p in self.frozen:  # no gradient: the optimizer leaves them (and their state) alone
                p.grad = None
        self.scaler.unscale_(self.optimizer)
        grad_norm = global_grad_norm(self.model.parameters(), self.local_params)
        if self.s.grad_clip:
            nn.utils.clip_grads_with_norm_(self.model.parameters(), self.s.grad_clip, grad_norm)
        self.scaler.step(self.optimizer)  # skipped on every rank when a gradient is NaN/Inf on one
        skipped = self.scaler.last_found_inf
        self.scaler.update(self.fixed_scale)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.model.on_optimizer_step()

        loss = self.micro_loss.clone()
        self.micro_loss.zero_()
        bad = ~torch.isfinite(loss)
        if self.fixed_scale is not None:  # with a dynamic fp16 scale, overflowing gradients are routine
            bad |= ~torch.isfinite(grad_norm)
        self.step += 1
        self.guard.update(self.step, loss, bad)
        self.window.add_step(loss, grad_norm, skipped)

    # ---- logging and evaluation ---------------------------------------------------------------------
    def log_train(self, progress: Progress) -> None:
        """Report the means since the last log line (rank 0: the only per-interval host sync) and reset them."""
        if self.dist.is_main:
            means, skipped = self.window.read()
            elapsed = self.window.elapsed()
            timed_steps = self.step - self.window.clock_step
            scalars = {
                **means,
                "lr": self.optimizer.param_groups[0]["lr"],
                "throughput": timed_steps * self.step_batch / elapsed,  # images/s
                "data_wait": min(self.window.wait / elapsed, 1.0),  # fraction of the time spent waiting for data
                "epoch": self.epoch_position,
                "skipped_steps": skipped,  # NaN/Inf gradients (fp16 overflows among them) since the last line
            }
            if self.fixed_scale is None:  # fp16's dynamic loss scale
                scalars["loss_scale"] = self.scaler.get_scale()
            self.report.interval(self.step, self.s.total_steps, self.steps_per_epoch, scalars, elapsed / timed_steps,
                              self.model.head.stats(), self.window.last_diagnostics, progress)
        self.window.clear(self.step)

    def log_epoch_end(self) -> None:
        """Log the unreadable samples skipped so far (every rank's, counted once) as ``data/bad_samples``."""
        if not hasattr(self.dataset, "bad_indices"):
            return
        bad = len(set().union(*all_gather_objects(self.dataset.bad_indices)))
        if self.dist.is_main:
            log.info(f"step {self.step}: epoch {self.epoch} done, {bad} unreadable samples skipped so far")
            self.report.scalars({"data/bad_samples": bad}, self.step)

    def evaluate(self) -> bool:
        """Verification on rank 0 (the other ranks wait), logged and written to ``metrics.json``.

        Returns, on every rank, whether the best-checkpoint metric improved (never at step 0). A model
        holding NaN/Inf (after a diverged step, batch norm's running statistics too) is never evaluated:
        NonFiniteError on every rank instead, naming the step and the remedies.
        """
        self.guard.check()
        self.guard.refuse_state(self.model, self.step, "it was not evaluated")
        improved = False
        if self.dist.is_main and self.evaluator is not None:
            with self.window.pause():
                results = self.evaluator(self.model.backbone)
            target = self.s.best_metric or next(iter(results))
            improved = self.s.save_best and self.report.record.improves(results, target, self.step)
            if improved:
                log.info(f"step {self.step} {target} accuracy improved: saving {BEST_NAME}")
            self.report.validation(results, self.step, self.epoch_position)
        return bool(broadcast_object(improved))

    # ---- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> Optional[dict[str, Any]]:
        """Everything needed to continue, with a sharded head and its optimizer state gathered whole:
        collective (every rank calls it), the state on rank 0 and None on the others."""
        head = self.model.head.full_state_dict()
        optimizer = full_optimizer_state(self.optimizer, self.local_params)
        if not self.dist.is_main:
            return None
        return {
            "backbone": self.model.backbone.state_dict(),
            "head": head,
            "terms": self.model.terms.state_dict(),  # extra loss terms (a distillation's projection, never its teacher)
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "precision": precision_name(self.s.amp_dtype),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch,
            "global_batch": self.step_batch,
            "grad_accum": self.s.grad_accum,
            "sampler_seed": self.sampler.seed,
            "data": {"images": self.sampler.size, "classes": self.model.head.num_classes},
            "window": self.window.state_dict(),
            **self.report.record.state_dict(),
            "world_size": self.dist.world_size,
            "config": self.s.config,
            "input": INPUT_CONVENTION,
        }

    def save(self, step_file: bool = True, best: bool = False) -> None:
        """Checkpoint on rank 0 with every rank's random state: ``step_N.pt`` (once per step) and,
        when ``best``, ``best.pt``. A NaN/Inf state is never written (NonFiniteError instead)."""
        self.guard.check()
        self.guard.refuse_state(self.model, self.step, "no checkpoint was written")
        rng = all_gather_objects(rng_state())
        state = self.state_dict()
        if state is not None:
            state["rng"] = rng
            directory = self.s.run_dir / CHECKPOINT_DIR
            if step_file and self.saved_step != self.step:
                path = save_checkpoint(state, checkpoint_path(directory, self.step))
                rotate_checkpoints(directory, self.s.keep_last)
                log.info(f"step {self.step} saved {path}")
            if best:
                save_checkpoint(state, directory / BEST_NAME)
                log.info(f"step {self.step} saved {directory / BEST_NAME}")
            self.report.checkpointed(self.step, self.epoch_position)
        if step_file:
            self.saved_step = self.step
        barrier()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save`, at the same place in the data, with this
        run's optimizer hyperparameters (:func:`~facetrain.engine.optim.restore_configured_hyperparameters`).

        A checkpoint written with another global batch (world size, batch size or ``grad_accum``) continues
        at the same epoch and image of that epoch (rounded down to a whole step of the new batch), with the
        step counter, the schedule and the heads' step counts re-expressed in the new batch's steps by
        :func:`~facetrain.runs.resume.re_express_step` (the rule ``trainer.max_steps`` follows too).
        """
        configured = [{key: value for key, value in group.items() if key != "params"} for group in self.optimizer.param_groups]
        try:
            self.model.backbone.load_state_dict(state["backbone"])
            self.model.head.load_full_state_dict(state["head"])
            self.model.terms.load_state_dict(state.get("terms", {}))
            self.optimizer.load_state_dict(shard_optimizer_state(state["optimizer"], self.optimizer, self.local_params))
        except (RuntimeError, ValueError) as exc:
            raise ResumeError(f"the checkpoint does not fit the model: {str(exc).strip().splitlines()[0]}",
                              "resume with the settings the run was started with") from None
        self.scheduler.load_state_dict(state["scheduler"])
        load_scaler_state(self.scaler, state, precision_name(self.s.amp_dtype))
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.resumed_from = state["step"]
        self.report.record.load_state_dict(state)
        self.window.load_state_dict(state.get("window", {}))
        step_batch = self.step_batch
        global_batch, accum = state.get("global_batch", step_batch), state.get("grad_accum", 1)
        if state["world_size"] == self.dist.world_size and (global_batch, accum) == (step_batch, self.s.grad_accum):
            set_rng_state(state["rng"][self.dist.rank])
        else:
            re_express = partial(re_express_step, saved_batch=global_batch, step_batch=step_batch,
                                 images=self.sampler.size)
            self.step = re_express(state["step"])
            self.epoch, steps_in_epoch = divmod(self.step, self.steps_per_epoch)
            self.batch = steps_in_epoch * self.s.grad_accum
            self.scheduler.last_epoch = self.step
            self.model.re_express_steps(re_express)
            log.warning(f"warning: the checkpoint was written by {counted(state['world_size'], 'process', 'processes')} with a global batch of "
                        f"{global_batch}, this run has {self.dist.world_size} and {step_batch}: step {state['step']} "
                        f"(epoch {state['epoch']} + {state['batch_in_epoch'] // accum} of its steps) continues as step "
                        f"{self.step} of {self.s.total_steps} at epoch {self.epoch_position:.4f}, the schedule in steps of "
                        f"{step_batch} images; not bit-identical to an uninterrupted run")
        restore_configured_hyperparameters(self.optimizer, self.scheduler, configured)
