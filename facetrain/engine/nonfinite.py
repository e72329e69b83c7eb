"""Non-finite losses and gradients: counted on the device every step (no host sync), looked at by
the host only at log intervals and before checkpoints; a checkpoint never holds a NaN or Inf."""
from __future__ import annotations

import torch
from torch import nn

from facetrain.parallel.groups import all_gather_objects, all_reduce_max
from facetrain.errors import FacetrainError

REMEDIES = ("lower optimizer.lr (or lengthen scheduler.warmup_epochs), set trainer.grad_clip (e.g. 5), "
            "or train in fp32 (trainer.precision=fp32); the checkpoints written so far are kept")


class NonFiniteError(FacetrainError):
    """Training produced NaN or Inf and cannot continue."""


class NonFiniteGuard:
    """Tracks runs of consecutive bad steps; trips once a run reaches ``limit`` (0: never)."""

    def __init__(self, device: torch.device, limit: int) -> None:
        self.limit = limit
        self.streak = torch.zeros((), dtype=torch.int64, device=device)
        self.longest = torch.zeros((), dtype=torch.int64, device=device)
        self.first_step = torch.zeros((), dtype=torch.int64, device=device)  # where the tripping run began
        self.first_loss = torch.zeros((), dtype=torch.float32, device=device)

    def update(self, step: int, loss: torch.Tensor, bad: torch.Tensor) -> None:
        """Record whether ``step`` (with ``loss``) was bad; device ops only."""
        self.streak = torch.where(bad, self.streak + 1, 0)
        starts = bad & (self.streak == 1) & (self.longest < self.limit)  # frozen once tripped
        self.first_step = torch.where(starts, step, self.first_step)
        self.first_loss = torch.where(starts, loss.detach().float(), self.first_loss)
        self.longest = torch.maximum(self.longest, self.streak)

    def check(self) -> None:
        """Raise NonFiniteError on every rank once any rank has tripped (one sync, one collective)."""
        if self.limit <= 0 or all_reduce_max(int(self.longest)) < self.limit:
            return
        reports = all_gather_objects((int(self.longest), int(self.first_step), float(self.first_loss)))
        _, step, loss = next(report for report in reports if report[0] >= self.limit)
        raise NonFiniteError(f"the loss or its gradients were NaN/Inf for {self.limit} consecutive steps "
                             f"from step {step} (loss {loss}); training stopped", REMEDIES)

    def refuse_state(self, model: nn.Module, step: int, consequence: str) -> None:
        """Raise NonFiniteError on every rank if a parameter or buffer of ``model`` holds NaN/Inf on any
        rank (one host sync; ranks differ when they hold different rows of a sharded head), saying what was
        not done (``consequence``); called before every checkpoint, so that none ever holds them, and
        before every evaluation."""
        tensors = {name: t for name, t in model.state_dict().items()  # a module's extra state may be no tensor
                   if isinstance(t, torch.Tensor) and t.is_floating_point()}
        finite = torch.stack([t.isfinite().all() for t in tensors.values()]).tolist() if tensors else []
        bad = [name for name, ok in zip(tensors, finite) if not ok]
        if all_reduce_max(len(bad)) == 0:
            return
        bad = next(names for names in all_gather_objects(bad) if names)
        since = f" (the loss was {float(self.first_loss)} at step {int(self.first_step)})" if int(self.streak) else ""
        raise NonFiniteError(f"at step {step} the model holds NaN/Inf in {', '.join(bad[:3])}"
                             + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
                             + f"{since}; {consequence}", REMEDIES)
