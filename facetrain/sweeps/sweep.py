"""Sweeps (``python train.py -m loss=arcface,cosface``): each job is a normal run directory in the sweep's folder,
``<output_root>/multirun/<sweep.name or start time>/<name>_<overrides>/``, and the folder gets a summary:
``sweep.json`` and ``sweep.md`` (overrides, status, steps, final loss, each target's final and best accuracy, the
best job by ``sweep.objective``, an Optuna study's result), rewritten as each job finishes, and at the end
``compare.png``, the jobs' curves (as ``scripts/compare_runs.py`` draws them).

The summary is derived from the job directories (``.hydra/``, ``metrics.json``) plus each job's status, which
the job itself records when it ends: the jobs may be other processes (submitit), so the rewrite holds a lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from facetrain.files import atomic_write
from facetrain.parallel.groups import cleanup
from facetrain.plural import counted
from facetrain.runs.failure import describe_error
from facetrain.runs.run_dir import launch_rank, register_resolvers
from facetrain.sweeps.submitit_jobs import in_submitit_job, join_process_group

SUMMARY_JSON, SUMMARY_MD, FIGURE = "sweep.json", "sweep.md", "compare.png"
STUDY_FILE = "optimization_results.yaml"  # written by Hydra's Optuna sweeper at the end
LOCK_FILE = ".sweep.lock"
# A submitit job is a fresh process that unpickles SweepSummary (importing this module) before Hydra resolves the
# job's directories, which takes facetrain's resolvers: this is where that process gets them.
register_resolvers()


def objective_target(config: DictConfig, metrics: dict[str, Any]) -> Optional[str]:
    """The eval target a job is judged by: ``sweep.objective``, else ``checkpoint.best_metric``, else the first."""
    chosen = OmegaConf.select(config, "sweep.objective") or OmegaConf.select(config, "checkpoint.best_metric")
    return chosen or next(iter(metrics.get("best", {})), None)


def objective(config: DictConfig, metrics: dict[str, Any]) -> Optional[float]:
    """What a sweep job returns to the sweeper: the best accuracy of its objective target (None without one)."""
    target = objective_target(config, metrics)
    best = metrics.get("best", {}).get(target) if target is not None else None
    return None if best is None else float(best["accuracy"])


def is_sweep(path: Path) -> bool:
    return (path / "multirun.yaml").is_file()


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep, in job order."""
    jobs = [path for path in sweep_dir.iterdir() if (path / ".hydra" / "hydra.yaml").is_file()]
    return sorted(jobs, key=lambda path: (job_number(path), path.name))


def job_number(job_dir: Path) -> int:
    return int(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.num)


def job_overrides(job_dir: Path) -> list[str]:
    """A job's overrides as its command line gave them, less ``sweep.name`` (the sweep's folder itself)."""
    overrides = [str(item) for item in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    return [item for item in overrides if not item.startswith("sweep.name=")]


def varying(overrides: list[list[str]]) -> list[list[str]]:
    """Each job's overrides that not every job shares (what the sweep varies)."""
    common = set.intersection(*map(set, overrides)) if overrides else set()
    return [[item for item in items if item not in common] for items in overrides]


def job_labels(jobs: list[Path]) -> list[str]:
    """Each job labelled by the overrides that differ between the jobs (its directory name when none do)."""
    return [" ".join(items) or job.name for job, items in zip(jobs, varying([job_overrides(job) for job in jobs]))]


def job_summary(job_dir: Path, status: str, error: Optional[str]) -> dict[str, Any]:
    """A job's row: its number, directory, overrides, status, metrics and objective."""
    metrics_file = job_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    return {"job": job_number(job_dir), "dir": job_dir.name, "overrides": job_overrides(job_dir), "status": status,
            "error": error, "step": metrics.get("step"), "train_loss": metrics.get("train_loss"),
            "val": metrics.get("val", {}), "best": metrics.get("best", {}),
            "objective": {"target": objective_target(config, metrics), "value": objective(config, metrics)}}


@contextlib.contextmanager
def locked(sweep_dir: Path) -> Iterator[None]:
    """Exclusive use of the sweep's summary among its jobs' processes."""
    with open(sweep_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_summary(sweep_dir: Path, job_dir: Optional[Path] = None, status: str = "", error: Optional[str] = None,
                   unreported: str = "running") -> dict[str, Any]:
    """Rewrite ``sweep.json`` and ``sweep.md`` from the job directories, with ``job_dir``'s new ``status``;
    jobs that have not reported one yet are ``unreported``. Returns the summary."""
    with locked(sweep_dir):
        previous = json.loads((sweep_dir / SUMMARY_JSON).read_text()) if (sweep_dir / SUMMARY_JSON).is_file() else {}
        reported = {job["dir"]: (job["status"], job["error"]) for job in previous.get("jobs", [])
                    if job["status"] not in ("running", "unfinished")}
        if job_dir is not None:
            reported[job_dir.name] = (status, error)
        jobs = [job_summary(path, *reported.get(path.name, (unreported, None))) for path in sweep_jobs(sweep_dir)]
        scored = [job for job in jobs if job["objective"]["value"] is not None]
        best = max(scored, key=lambda job: job["objective"]["value"], default=None)
        summary = {"sweep": sweep_dir.name, "jobs": jobs, "best": None if best is None else
                   {key: best[key] for key in ("job", "dir", "overrides", "objective")}}
        if (sweep_dir / STUDY_FILE).is_file():
            summary["study"] = OmegaConf.to_container(OmegaConf.load(sweep_dir / STUDY_FILE))
        with atomic_write(sweep_dir / SUMMARY_JSON, "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
        with atomic_write(sweep_dir / SUMMARY_MD, "w") as f:
            f.write(markdown(summary))
    return summary


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, one row per job, with the best job and the study's result below it."""
    jobs = summary["jobs"]
    targets = list(dict.fromkeys(target for job in jobs for target in [*job["val"], *job["best"]]))
    shown = varying([job["overrides"] for job in jobs])
    common = sorted(set.intersection(*map(set, (job["overrides"] for job in jobs)))) if jobs else []
    header = ["job", "overrides", "status", "steps", "final loss"]
    header += [f"{target} {kind}" for target in targets for kind in ("final", "best (step)")]
    lines = [f"# Sweep {summary['sweep']}", "",
             counted(len(jobs), "job") + (f"; every job: `{' '.join(common)}`" if common else ""), "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for job, overrides in zip(jobs, shown):
        row = [str(job["job"]), f"`{' '.join(overrides)}`" if overrides else "-", job["status"],
               "-" if job["step"] is None else str(job["step"]), _number(job["train_loss"])]
        for target in targets:
            best = job["best"].get(target)
            row += [_number(job["val"].get(target, {}).get("accuracy")),
                    f"{best['accuracy']:.4f} ({best['step']})" if best else "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"Job {job['job']} failed: {job['error']}" for job in jobs if job["error"]]
    if summary["best"] is not None:
        best = summary["best"]
        overrides = next(items for job, items in zip(jobs, shown) if job["dir"] == best["dir"]) or best["overrides"]
        lines.append(f"Best: job {best['job']} (`{' '.join(overrides)}`), {best['objective']['target']} best "
                     f"accuracy {best['objective']['value']:.4f}.")
    if "study" in summary and "best_value" in summary["study"]:
        params = " ".join(f"{key}={value}" for key, value in summary["study"]["best_params"].items())
        lines.append(f"Optuna: best value {summary['study']['best_value']:.4f} with `{params}`.")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks`` in ``configs/train.yaml``): a sweep job records its status in the
    sweep's summary when it ends (rank 0, in the job's own process); the sweep adds its figure at the end. A
    submitit job's processes join their process group when the job starts and leave it when it ends."""

    def __init__(self) -> None:
        self.joined = False

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.joined = config.hydra.mode == RunMode.MULTIRUN and in_submitit_job() and join_process_group()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.joined:
            cleanup()
        if config.hydra.mode != RunMode.MULTIRUN or launch_rank() != 0:
            return

        try:
            job_return.return_value  # raises the job's exception when it failed
            status, error = "completed", None
        except Exception as exc:  # noqa: BLE001 - any failure is reported by its one line
            status, error = "failed", describe_error(exc)
        update_summary(Path(config.hydra.sweep.dir), Path(config.hydra.runtime.output_dir), status, error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if launch_rank() != 0:
            return
        from facetrain.sweeps.compare import load_run, plot

        sweep_dir = Path(config.hydra.sweep.dir)
        summary = update_summary(sweep_dir, unreported="unfinished")
        jobs = [path for path in sweep_jobs(sweep_dir) if (path / "metrics.json").is_file()]
        if jobs:
            plot([load_run(path, label) for path, label in zip(jobs, job_labels(jobs))], sweep_dir / FIGURE)
        print(markdown(summary) + f"\nsweep summary: {sweep_dir / SUMMARY_MD}, curves: {sweep_dir / FIGURE}")
