"""What the trainer sums between two log lines, on the device (no host sync until it is read)."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable, Iterator

import torch


class StepWindow:
    """Sums of the optimizer steps since the last log line: loss, gradient norm, skipped steps (NaN/Inf
    gradients) and the head's per-batch diagnostic means; and the wall clock of those steps, less the
    time spent waiting for data or paused (evaluation, checkpoints)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.skipped = torch.zeros((), device=device)
        self.diagnostics: dict[str, torch.Tensor] = {}
        self.last_diagnostics: dict[str, torch.Tensor] = {}  # the last micro-batch's, for histograms
        self.steps = 0
        self.restart_clock(0)

    def add_micro_batch(self, diagnostics: dict[str, torch.Tensor], weight: float) -> None:
        """Add ``weight`` times the batch means of the head's diagnostics (a micro-batch weighs
        ``1 / grad_accum``, so the sums count optimizer steps)."""
        for name, values in diagnostics.items():
            mean = values.float().mean() * weight
            if name in self.diagnostics:
                self.diagnostics[name] += mean
            else:
                self.diagnostics[name] = mean
        self.last_diagnostics = diagnostics

    def add_step(self, loss: torch.Tensor, grad_norm: torch.Tensor, skipped: torch.Tensor) -> None:
        self.loss += loss
        self.grad_norm += grad_norm
        self.skipped += skipped
        self.steps += 1

    def read(self) -> tuple[dict[str, float], int]:
        """The means per step (loss, grad_norm, diagnostics) and the number of skipped steps: one host sync."""
        sums = {"loss": self.loss, "grad_norm": self.grad_norm, **self.diagnostics}
        values = torch.cat([torch.stack(list(sums.values())).float() / max(self.steps, 1), self.skipped.view(1)]).tolist()
        return dict(zip(sums, values[:-1])), round(values[-1])

    def clear(self, step: int) -> None:
        """Start a new window after ``step``."""
        self.loss.zero_()
        self.grad_norm.zero_()
        self.skipped.zero_()
        self.diagnostics.clear()
        self.steps = 0
        self.restart_clock(step)

    def restart_clock(self, step: int) -> None:
        """Time the steps after ``step`` (a resumed window's earlier steps were not timed here)."""
        self.start, self.wait, self.paused = time.perf_counter(), 0.0, 0.0
        self.clock_step = step

    def timed(self, batches: Iterable) -> Iterator:
        """``batches``, adding the time spent waiting for each to :attr:`wait`."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait += time.perf_counter() - start
            yield batch

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Time spent in here (evaluation, checkpoints) does not count towards throughput and ETA."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start

    def elapsed(self) -> float:
        """Seconds of the timed steps, without the pauses."""
        return max(time.perf_counter() - self.start - self.paused, 1e-9)

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.cpu(), "grad_norm": self.grad_norm.cpu(), "skipped": self.skipped.cpu(),
                "steps": self.steps, "diagnostics": {name: total.cpu() for name, total in self.diagnostics.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a window saved by :meth:`state_dict` (keys a checkpoint of an earlier version lacks count 0)."""
        self.loss.fill_(state.get("loss", 0.0))
        self.grad_norm.fill_(state.get("grad_norm", 0.0))
        self.skipped.fill_(state.get("skipped", 0.0))
        self.diagnostics = {name: total.to(self.loss.device) for name, total in state.get("diagnostics", {}).items()}
        self.steps = state.get("steps", 0)
