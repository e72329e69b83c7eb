"""What the training loop reports, from rank 0: a line per interval to the console and ``train.log``, scalars
and histograms to TensorBoard, the same scalars to the trackers (MLflow, W&B), and the run's figures to
``metrics.json`` (:class:`~facetrain.engine.record.RunRecord`). On every other rank each method does nothing."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.tensorboard import SummaryWriter

from facetrain.engine.record import RunRecord
from facetrain.engine.startup import seconds_since_start
from facetrain.runs.logging import Progress, format_duration
from facetrain.runs.tensorboard import (LOSS_TAG, final_metrics, validation_scalars, write_config, write_gpu_memory,
                                        write_hparams)
from facetrain.runs.trackers import Tracker

log = logging.getLogger("facetrain")


class TrainLog:
    """The run's reports; ``config`` (the resolved config) goes to TensorBoard and the trackers."""

    def __init__(self, run_dir: Path, config: dict[str, Any], tracker: Tracker, is_main: bool,
                 device: torch.device) -> None:
        self.run_dir, self.config, self.tracker, self.is_main, self.device = run_dir, config, tracker, is_main, device
        self.record = RunRecord(run_dir / "metrics.json")
        self.writer: Optional[SummaryWriter] = None

    def open(self, step: int, resumed_from: Optional[int]) -> None:
        """Start writing at ``step``. A resumed run hides what the killed run logged after its checkpoint (and,
        when it resumed with a larger global batch, so fewer steps, the points past its new step: no step twice)."""
        if not self.is_main:
            return
        purge = step if resumed_from is None else min(step, resumed_from)
        self.writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=purge + 1 if purge else None)
        write_config(self.writer, self.config, step)
        if resumed_from is None:
            self.tracker.log_params(self.config)

    def scalars(self, scalars: dict[str, float], step: int) -> None:
        """Scalars (tag -> value) at ``step`` to TensorBoard and the trackers."""
        if self.writer is None:
            return
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.tracker.log_scalars(scalars, step)

    def interval(self, step: int, total_steps: int, steps_per_epoch: int, scalars: dict[str, float],
                 step_time: float, head_stats: dict[str, Any], diagnostics: dict[str, torch.Tensor],
                 progress: Progress) -> None:
        """One interval's means (``scalars``: loss, grad_norm, lr, throughput, data_wait, epoch, skipped_steps and,
        in fp16, loss_scale): the progress bar, a line with the ETA, TensorBoard (with the head's statistics and
        histograms of the last step's ``diagnostics``) and the trackers."""
        if self.writer is None:
            return
        self.record.last_loss = scalars["loss"]
        left = total_steps - step
        eta, epoch_eta = left * step_time, min(left, -step % steps_per_epoch) * step_time
        skipped = int(scalars["skipped_steps"])
        progress.show(loss=f"{scalars['loss']:.3f}", lr=f"{scalars['lr']:.2e}", img_s=f"{scalars['throughput']:.0f}")
        log.info(f"step {step}/{total_steps} epoch {scalars['epoch']:.2f} loss {scalars['loss']:.4f} "
                 f"lr {scalars['lr']:.3e} {scalars['throughput']:.1f} img/s data {scalars['data_wait']:.0%} "
                 f"grad_norm {scalars['grad_norm']:.3g}" + (f" skipped {skipped}" if skipped else "")
                 + f" ETA {format_duration(eta)} (epoch {format_duration(epoch_eta)})")
        self.scalars({LOSS_TAG if name == "loss" else f"train/{name}": v for name, v in scalars.items()}
                     | {f"head/{name}": float(v) for name, v in head_stats.items()}, step)
        for name, values in diagnostics.items():
            finite = values[torch.isfinite(values)].float()  # a skipped NaN step leaves none
            if finite.numel():
                self.writer.add_histogram(f"train/{name}", finite, step)
        write_gpu_memory(self.writer, self.device, step)

    def startup(self, step: int) -> None:
        """How long the process took to finish its first optimizer step (one sync, once)."""
        if not self.is_main:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        log.info(f"step {step}: first optimizer step done {seconds_since_start():.1f} s after the process started "
                 f"({time.process_time():.1f} s of CPU time)")

    def validation(self, results: dict[str, dict[str, Any]], step: int, epoch: float) -> None:
        """Verification ``results`` (target -> metrics): kept as the last and best, logged, and written."""
        if self.writer is None:
            return
        self.record.add_validation(results, step, self.writer)
        self.tracker.log_scalars(validation_scalars(results, self.record.best), step)
        self.record.write(step, epoch)

    def checkpointed(self, step: int, epoch: float) -> None:
        """After a checkpoint: ``metrics.json`` and TensorBoard on disk, so what was logged survives a kill -9."""
        if self.writer is None:
            return
        self.record.write(step, epoch)
        self.writer.flush()

    def close(self, step: int, epoch: float) -> dict[str, Any]:
        """The run's final figures (also to TensorBoard's hparams and the trackers), the writer closed."""
        metrics = self.record.metrics(step, epoch)
        if self.writer is not None:
            write_hparams(self.writer, self.config, final_metrics(metrics), step)
            self.tracker.log_final(final_metrics(metrics), step)
            self.writer.close()
        return metrics
