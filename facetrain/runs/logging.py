"""What rank 0 shows and writes as text: ``train.log`` plus the console, with progress bars; other
ranks only report warnings."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from tqdm import tqdm

LOGGER_NAME = "facetrain"


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so log lines do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(run_dir: Path, is_main: bool) -> logging.Logger:
    """The ``facetrain`` logger: console and ``<run_dir>/train.log`` (appended on resume) on rank 0."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(run_dir / "train.log", mode="a")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day), as tqdm shows its ETA."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days} day{'s' if days > 1 else ''}, {clock}" if days else clock


class Progress:
    """Two tqdm bars, each with its ETA: the whole run (``train``) and the current epoch under it."""

    def __init__(self, total_steps: int, steps_per_epoch: int, step: int, enabled: bool) -> None:
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.epochs = math.ceil(total_steps / steps_per_epoch)
        self.run = tqdm(total=total_steps, initial=step, desc="train", position=0, disable=not enabled,
                        dynamic_ncols=True)
        epoch, done = divmod(step, steps_per_epoch)
        self.epoch = tqdm(total=self.epoch_steps(epoch), initial=done, desc=self.epoch_name(epoch), position=1,
                          leave=False, disable=not enabled, dynamic_ncols=True)

    def epoch_steps(self, epoch: int) -> int:
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def epoch_name(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.epochs}"

    def start_epoch(self, epoch: int) -> None:
        self.epoch.set_description_str(self.epoch_name(epoch), refresh=False)
        self.epoch.reset(total=self.epoch_steps(epoch))

    def advance(self, step: int) -> None:
        """One optimizer step done; ``step`` is the new count."""
        self.run.update(1)
        if step % self.steps_per_epoch == 0 and step < self.total_steps:
            self.start_epoch(step // self.steps_per_epoch)
        else:
            self.epoch.update(1)

    def show(self, **values: str) -> None:
        self.run.set_postfix(values, refresh=False)

    def close(self) -> None:
        self.epoch.close()
        self.run.close()
