"""What a run reports beyond its TensorBoard curves: the last training loss and the last and best
verification accuracy of every target, written to ``metrics.json`` and carried by checkpoints."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from torch.utils.tensorboard import SummaryWriter

from facetrain.files import atomic_write
from facetrain.runs.tensorboard import accuracy_tag

log = logging.getLogger("facetrain")


class RunRecord:
    """The figures of a run (rank 0's): :meth:`metrics` is what ``metrics.json`` holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.best: dict[str, dict[str, float]] = {}  # target -> {"accuracy", "step"}
        self.last_val: dict[str, dict[str, Any]] = {}  # target -> the verification result
        self.last_loss: Optional[float] = None

    def improves(self, results: dict[str, dict[str, Any]], target: str, step: int) -> bool:
        """Whether ``results`` at ``step`` beat the best accuracy of ``target`` so far. The untrained model
        (step 0, ``eval.at_start``) is a reference, never the best: best.pt is never written at step 0 either."""
        return step > 0 and results[target]["accuracy"] > self.best.get(target, {}).get("accuracy", -1.0)

    def add_validation(self, results: dict[str, dict[str, Any]], step: int, writer: SummaryWriter) -> None:
        """Keep ``results`` (target -> accuracy, std, pairs) as the last and, where better, the best;
        log a line per target and write its accuracy and (once training started) best accuracy to TensorBoard."""
        self.last_val = results
        for name, result in results.items():
            if self.improves(results, name, step):
                self.best[name] = {"accuracy": result["accuracy"], "step": step}
            writer.add_scalar(accuracy_tag(name), result["accuracy"], step)
            best = self.best.get(name)
            if best is not None:
                writer.add_scalar(accuracy_tag(name, best=True), best["accuracy"], step)
            log.info(f"step {step} val {name}: accuracy {result['accuracy']:.4f} +- {result['std']:.4f} "
                     f"({result['pairs']} pairs" + (f", best {best['accuracy']:.4f})" if best else ")"))

    def metrics(self, step: int, epoch: float) -> dict[str, Any]:
        """The run's figures at ``step``, having trained ``epoch`` epochs of data."""
        return {
            "step": step,
            "epoch": epoch,
            "train_loss": self.last_loss,
            "val": {name: {"accuracy": r["accuracy"], "std": r["std"]} for name, r in self.last_val.items()},
            "best": self.best,
        }

    def write(self, step: int, epoch: float) -> None:
        """:meth:`metrics` to the ``metrics.json`` file, atomically."""
        with atomic_write(self.path, "w") as f:
            f.write(json.dumps(self.metrics(step, epoch), indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_val": self.last_val, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.last_val, self.last_loss = state["best"], state["last_val"], state["last_loss"]
