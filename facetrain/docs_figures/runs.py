"""Training runs for the docs' figures, started as a reader would start them: ``python train.py ...`` in a
work folder of their own (runs under ``<work>/outputs``, synthetic data generated into ``<work>/cache``)."""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from facetrain.errors import FacetrainError
from facetrain.sweeps.compare import Run, load_run

REPO = Path(__file__).resolve().parents[2]  # where train.py lives
# the tiny synthetic set of --quick runs (a few seconds to generate, evaluate and train)
QUICK_DATA = ("dataset.num_classes=8", "dataset.images_per_class=4", "dataset.val_identities=6",
              "dataset.val_images_per_identity=2", "dataset.val_pairs=20", "trainer.batch_size=8",
              "trainer.num_workers=0")


@dataclass
class Launched:
    seconds: float  # wall time of the command
    peak_memory_gb: float  # the largest resident set of any process the command started


def train(work: Path, label: str, overrides: list[str], multirun: bool = False) -> Launched:
    """Run ``python train.py [-m] overrides`` in ``work`` (its output in ``<work>/logs/<label>.log``)."""
    return script(work, label, "train.py", [*(["-m"] if multirun else []), *overrides, "output_root=outputs",
                                            "trainer.progress_bar=false"])


def script(work: Path, label: str, name: str, arguments: list[str]) -> Launched:
    """Run ``python <name> arguments`` (a script of the repository) in ``work``, its output in
    ``<work>/logs/<label>.log``."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{label}.log"
    command = [sys.executable, str(REPO / name), *arguments]
    env = {**os.environ, "FACETRAIN_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this command's resources (its processes' largest RSS)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise FacetrainError(f"{' '.join(command[1:])} failed (exit {process.returncode}): {tail[0]}",
                             f"see {log}")
    return Launched(seconds, usage.ru_maxrss / 2**20)  # kB on Linux


def only_run(work: Path, name: str) -> Path:
    """The one run directory of run ``name`` in ``work``."""
    runs = sorted((work / "outputs" / name).iterdir())
    if len(runs) != 1:
        raise FacetrainError(f"{work / 'outputs' / name} holds {len(runs)} runs, expected one",
                             "use an empty --work folder")
    return runs[0]


def sweep_dir(work: Path, sweep: str) -> Path:
    return work / "outputs" / "multirun" / sweep


def sweep_runs(work: Path, sweep: str) -> list[Run]:
    """Every job of sweep ``sweep`` in job order, each labelled by its overrides."""
    summary = json.loads((sweep_dir(work, sweep) / "sweep.json").read_text())
    return [load_run(sweep_dir(work, sweep) / job["dir"], " ".join(job["overrides"])) for job in summary["jobs"]]


def sweep_config(work: Path, sweep: str) -> DictConfig:
    """The composed config of the sweep's first job."""
    summary = json.loads((sweep_dir(work, sweep) / "sweep.json").read_text())
    return run_config(sweep_dir(work, sweep) / summary["jobs"][0]["dir"])


def run_config(run_dir: Path) -> DictConfig:
    """The run's composed config (``.hydra/config.yaml``)."""
    return OmegaConf.load(run_dir / ".hydra" / "config.yaml")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_curves(runs: list[Run], key: str) -> tuple[list[int], np.ndarray]:
    """The steps and a ``[seed, step]`` array of curve ``key`` (``loss`` or a target) of one run per seed."""
    curves = [run.curves[key] for run in runs]
    return [step for step, _ in curves[0]], np.array([[value for _, value in curve] for curve in curves])


def points(values: list[float]) -> str:
    """Mean and spread of accuracy differences, in points (hundredths); a single value without a spread."""
    mean, std = mean_std([100 * value for value in values])
    return f"{mean:+.1f}" + (f" +- {std:.1f}" if len(values) > 1 else "")


def established(differences: list[float]) -> bool:
    """Whether the mean of per-seed differences lies more than two standard errors from 0 (never, for one seed)."""
    mean, std = mean_std(differences)
    return len(differences) > 1 and abs(mean) > 2 * std / math.sqrt(len(differences))


def verdict(differences: list[float]) -> str:
    """:func:`established` in words."""
    return ("more than twice its standard error from 0" if established(differences)
            else "within twice its standard error of 0: not established")


def duration(seconds: float) -> str:
    """``2 min 57 s`` / ``11 s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"
