"""The sweep example's figures (docs/sweeps.md, block ``sweep``): the three-head smoke sweep that page shows,
run for 40 steps, its table (``sweep.md``'s rows) and best job."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facetrain.docs_figures.pages import load
from facetrain.docs_figures.runs import duration, sweep_config, sweep_dir, train

COMMAND = ("experiment=smoke", "loss=arcface,cosface,x2softmax", "sweep.name=heads")


@dataclass
class SweepExample:
    steps: int
    table: list[str]  # sweep.md's table and its "Best:" line
    pairs: int
    seconds: float


def measure(work: Path, quick: bool) -> SweepExample:
    steps = 2 if quick else 40
    launched = train(work, "sweep", [*COMMAND, f"trainer.max_steps={steps}"], multirun=True)
    summary = (sweep_dir(work, "heads") / "sweep.md").read_text().splitlines()
    table = [line for line in summary if line.startswith("|") or line.startswith("Best:")]
    return SweepExample(steps, table, sweep_config(work, "heads").dataset.val_pairs, launched.seconds)


def block(figures: SweepExample, stamp: str) -> str:
    f = figures
    lines = [f"{stamp}, for the sweep above with `trainer.max_steps={f.steps}` ({duration(f.seconds)} for the "
             f"three jobs; {load()} as they ended):", "", *[line for line in f.table if line.startswith("|")], "",
             *[line for line in f.table if line.startswith("Best:")], "",
             f"`experiment=smoke` verifies on {f.pairs} pairs (10 folds of {f.pairs // 10}), so accuracy moves in "
             f"steps of {1 / f.pairs:.2f} and the best job of so short a sweep is noise (runs of the same command "
             "have named different best jobs): the example shows what a sweep writes, not which head is better."]
    return "\n".join(lines) + "\n"
