"""The quick start's figures (README.md, block ``quickstart``): ``python train.py`` as it ships, its
verification accuracy before and after training, its loss at the first and last step, time and memory."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from facetrain.docs_figures.runs import QUICK_DATA, Launched, duration, only_run, run_config, train
from facetrain.docs_figures.pages import load
from facetrain.sweeps.compare import load_run

QUICK_STEPS = ("trainer.max_steps=2",)


@dataclass
class Quickstart:
    run_dir: Path
    classes: int
    images_per_class: int
    target: str
    pairs: int
    start_accuracy: float
    accuracy: float
    accuracy_std: float
    steps: int
    first_loss: float
    final_loss: float
    formula_loss: float  # log(classes) + s*sin(m): the loss at non-target logits of exactly 0
    images: int  # images trained on
    seconds: float
    peak_memory_gb: float


def measure(work: Path, quick: bool) -> Quickstart:
    """Train the quick start (``trainer.log_every=1`` adds the first step's loss to the log; with ``quick``
    a tiny set for 2 steps) and read its figures."""
    overrides = ["trainer.log_every=1", *(QUICK_DATA + QUICK_STEPS if quick else ())]
    launched = train(work, "quickstart", overrides)
    return read(only_run(work, _name(work)), launched)


def read(run_dir: Path, launched: Launched = Launched(math.nan, math.nan)) -> Quickstart:
    """The figures of a quick-start run directory (time and memory from ``launched``, unknown without)."""
    config = run_config(run_dir)
    run = load_run(run_dir, "quickstart")
    target = run.targets[0]
    classes, s, m = config.dataset.num_classes, config.loss.s, config.loss.m
    steps = run.metrics["step"]
    return Quickstart(run_dir, classes, config.dataset.images_per_class, target, config.dataset.val_pairs,
                      run.curves[target][0][1], run.metrics["val"][target]["accuracy"],
                      run.metrics["val"][target]["std"], steps, run.curves["loss"][0][1], run.metrics["train_loss"],
                      math.log(classes) + s * math.sin(m), steps * config.trainer.batch_size, launched.seconds,
                      launched.peak_memory_gb)


def _name(work: Path) -> str:
    """The quick start's run name (the one folder under ``<work>/outputs`` other than ``multirun``)."""
    names = [path.name for path in (work / "outputs").iterdir() if path.name != "multirun"]
    return sorted(names)[0]


def describe(figures: Quickstart) -> str:
    """The run in a few words, for the pages that start from it."""
    return (f"`python train.py`, {figures.steps} steps on {figures.classes} synthetic identities x "
            f"{figures.images_per_class} images")


def block(figures: Quickstart, stamp: str) -> str:
    f = figures
    return (
        f"{stamp}: verification accuracy on {f.pairs:,} pairs of held-out identities goes from "
        f"{f.start_accuracy:.3f} at step 0 (the untrained network) to {f.accuracy:.3f} +- {f.accuracy_std:.3f} "
        f"(over the 10 folds) at step {f.steps}; ArcFace's loss reads {f.first_loss:.1f} at step 1 and "
        f"{f.final_loss:.1f} at the end (the margin keeps it high even when the embedding is already good; "
        f"`log(classes) + s*sin(m)` = {f.formula_loss:.1f} is what non-target logits of exactly 0 would give: "
        f"[FAQ](docs/faq.md#the-arcface-loss-starts-around-40-50-is-that-broken)). The run took "
        f"{duration(f.seconds)} (about {f.images / f.seconds:.0f} images/s; {load()} as it ended), including "
        f"generating the data and both evaluations; peak memory {f.peak_memory_gb:.1f} GB. CPU kernels round differently from machine "
        f"to machine, and {f.steps} steps of training amplify it: expect the accuracy within a few hundredths. "
        f"Re-made by `python scripts/make_docs.py` (with `trainer.log_every=1`, to log the first step's loss).\n")
