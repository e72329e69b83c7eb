"""Compare training runs: a table of their final and best metrics, and their curves in one picture.

    python scripts/compare_runs.py outputs/ms1mv3_r50_arcface/<run> outputs/ms1mv3_r50_cosface/<run> \
        [--output compare.png]                                      # default: beside the runs
    python scripts/compare_runs.py outputs/multirun/<sweep>        # every job of a sweep

The table (stdout) comes from each run's ``metrics.json``: steps trained, the last training loss, and per
verification target the last accuracy and the best one with its step. The picture has the training
loss and one panel per verification target, read from each run's TensorBoard event files. A sweep's jobs
are labelled by the overrides that differ between them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from facetrain.cli import script_parser
from facetrain.sweeps.compare import default_output, labels, load_run, plot, read_curves, table  # noqa: F401 (read_curves: API)
from facetrain.sweeps.sweep import is_sweep, job_labels, sweep_jobs
from facetrain.errors import FacetrainError


def runs_and_labels(paths: list[Path]) -> list[tuple[Path, str]]:
    """Each run directory with its label; a sweep folder stands for its jobs."""
    plain = [path for path in paths if not is_sweep(path)]
    named = dict(zip(plain, labels(plain)))
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path in named:
            found.append((path, named[path]))
        else:
            jobs = sweep_jobs(path)
            found += zip(jobs, job_labels(jobs))
    return found


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = script_parser("compare_runs", __doc__)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories written by train.py, or sweep folders (outputs/multirun/<sweep>)")
    parser.add_argument("--output", type=Path, default=None,
                        help="the picture (PNG); default compare_runs.png in the folder holding the runs")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        found = runs_and_labels(args.runs)
        runs = [load_run(path, label) for path, label in found]
    except FacetrainError as exc:
        print(f"compare_runs: error: {exc}", file=sys.stderr)
        return 2
    print(table(runs))
    output = args.output or default_output([path for path, _ in found])
    plot(runs, output)
    print(f"curves: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
