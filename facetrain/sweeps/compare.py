"""Comparing training runs: a table of their final and best metrics (from each run's ``metrics.json``) and
their curves in one picture (from each run's TensorBoard event files). Used by ``scripts/compare_runs.py``
and for a sweep's ``compare.png``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from facetrain.runs.tensorboard import LOSS_TAG, accuracy_tag
from facetrain.errors import FacetrainError

Curve = list[tuple[int, float]]


@dataclass
class Run:
    label: str
    metrics: dict[str, Any]  # metrics.json
    curves: dict[str, Curve]  # "loss" and each target's name -> (step, value)
    scalars: dict[str, Curve] = field(default_factory=dict)  # every TensorBoard tag -> (step, value)

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys([*self.metrics.get("val", {}), *self.metrics.get("best", {})]))


def read_scalars(run_dir: Path) -> dict[str, Curve]:
    """Every scalar tag of the run's TensorBoard files, as TensorBoard shows it (purged steps hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def read_curves(run_dir: Path) -> dict[str, Curve]:
    """The training loss and each target's accuracy as TensorBoard shows them (purged steps hidden)."""
    return curves_of(read_scalars(run_dir))


def curves_of(scalars: dict[str, Curve]) -> dict[str, Curve]:
    """The training loss (key "loss") and each target's accuracy (key: the target) of a run's scalars."""
    curves = {"loss": scalars[LOSS_TAG]} if LOSS_TAG in scalars else {}
    for tag, curve in scalars.items():
        parts = tag.split("/")
        if len(parts) == 3 and tag == accuracy_tag(parts[1]):
            curves[parts[1]] = curve
    return curves


def load_run(run_dir: Path, label: str) -> Run:
    metrics_file = run_dir / "metrics.json"
    if not run_dir.is_dir():
        raise FacetrainError(f"{run_dir} does not exist",
                             "pass the run directories train.py wrote (outputs/<name>/<timestamp>)")
    if not metrics_file.is_file():
        raise FacetrainError(f"{run_dir} holds no metrics.json", "pass the run directories train.py wrote "
                             "(outputs/<name>/<timestamp>), of runs that reached an evaluation or a checkpoint")
    scalars = read_scalars(run_dir)
    return Run(label, json.loads(metrics_file.read_text()), curves_of(scalars), scalars)


def labels(run_dirs: list[Path]) -> list[str]:
    """``<name>/<timestamp>`` of each run (its last two path parts), the full path where those repeat."""
    short = [str(Path(*path.resolve().parts[-2:])) for path in run_dirs]
    return [s if short.count(s) == 1 else str(path) for s, path in zip(short, run_dirs)]


def default_output(run_dirs: list[Path]) -> Path:
    """``compare_runs.png`` beside the runs: in the deepest folder holding them all (``outputs/<name>/`` for runs
    of one name, a sweep's folder for its jobs)."""
    return Path(os.path.commonpath([str(path.resolve().parent) for path in run_dirs])) / "compare_runs.png"


def _number(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(runs: list[Run]) -> str:
    """One row per run: steps, final loss, and per target the final and the best accuracy (at its step)."""
    targets = list(dict.fromkeys(t for run in runs for t in run.targets))
    header = ["run", "steps", "final loss"]
    for target in targets:
        header += [f"{target} final", f"{target} best (step)"]
    rows = [header]
    for run in runs:
        row = [run.label, str(run.metrics.get("step", "-")), _number(run.metrics.get("train_loss"))]
        for target in targets:
            final = run.metrics.get("val", {}).get(target, {}).get("accuracy")
            best = run.metrics.get("best", {}).get(target)
            row += [_number(final), f"{best['accuracy']:.4f} ({best['step']})" if best else "-"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plot(runs: list[Run], output: Path) -> None:
    """The training loss, then one panel per verification target, each with every run's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["loss"] + list(dict.fromkeys(t for run in runs for t in run.curves if t != "loss"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for index, run in enumerate(runs):
            points = run.curves.get(panel, [])
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3,
                          color=f"C{index % 10}", label=run.label)
        axis.set_title("training loss" if panel == "loss" else f"{panel} accuracy")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
