"""Experiment trackers beside TensorBoard, chosen with ``logger=[tensorboard,mlflow]`` or ``[tensorboard,wandb]``.

The trainer tells them what it writes to TensorBoard (which is always written: the run directory's curves):
the resolved config as parameters when a run starts, every scalar at its step, the final metrics at the end.
Only rank 0 tracks. A resumed run continues its tracker run: MLflow's is found by the run directory's tag,
W&B's id is derived from the run directory.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping, Optional

from omegaconf import DictConfig

from facetrain.config.plugins import require
from facetrain.runs.tensorboard import flatten

RUN_DIR_TAG = "facetrain.run_dir"
MLFLOW_BATCH = 100  # parameters per MLflow request (its limit)


class Tracker:
    """What the trainer tells an experiment tracker; this base tells nobody (no tracker chosen, ranks > 0)."""

    def log_params(self, config: dict[str, Any]) -> None:
        """The resolved config of a run that starts (not of one that resumes)."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Scalars by their TensorBoard tags."""

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        """The figures a finished run is compared by (:func:`facetrain.runs.tensorboard.final_metrics`)."""

    def close(self, failed: bool) -> None:
        """End the tracker's run, as failed (or stopped) when training raised."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, kind: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close(failed=exc is not None)


class Trackers(Tracker):
    """Several trackers told the same."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_params(self, config: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_params(config)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_scalars(scalars, step)

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_final(metrics, step)

    def close(self, failed: bool) -> None:
        for tracker in self.trackers:
            tracker.close(failed)


class MLflowTracker(Tracker):
    """An MLflow run in experiment ``experiment`` of the tracking store at ``tracking_uri`` (a ``file:`` store,
    a database or a server), tagged with the run directory."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_dir: Path) -> None:
        mlflow = require("mlflow", "logger=mlflow", "mlflow")
        if tracking_uri.startswith("file:"):  # MLflow 3 asks file-store users to opt in; its runs need no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self._create_experiment(experiment)
        tag = str(run_dir.resolve())
        earlier = self.client.search_runs([experiment_id], f"tags.`{RUN_DIR_TAG}` = '{tag}'", max_results=1)
        if earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags={RUN_DIR_TAG: tag}).info.run_id

    def _create_experiment(self, name: str) -> str:
        """Create experiment ``name``; a sweep job that starts beside another may find it created meanwhile."""
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - MLflow's store-specific "already exists"
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)) for key, value in flatten(config).items()]
        for start in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + MLFLOW_BATCH])

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, float(value), now, step) for tag, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        self.log_scalars(metrics, step)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class WandbTracker(Tracker):
    """A Weights & Biases run whose files are in ``<run_dir>/wandb`` (``mode=offline``: synced later with
    ``wandb sync``); its id is derived from the run directory, so a resumed run continues it."""

    def __init__(self, project: str, entity: Optional[str], mode: Optional[str], run_name: str, run_dir: Path) -> None:
        wandb = require("wandb", "logger=wandb", "wandb")
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), name=run_name, id=run_id,
                              resume="allow", settings=wandb.Settings(console="off", quiet=True))

    def log_params(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.summary.update(dict(metrics))

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_trackers(logger: DictConfig, run_dir: Path, name: str, output_root: str, is_main: bool) -> Tracker:
    """The trackers ``logger`` chooses (none on ranks > 0), each run named after the run directory. MLflow
    defaults to the file store in ``<output_root>/mlruns`` and an experiment named after the run's ``name``."""
    trackers: list[Tracker] = []
    if not is_main:
        return Trackers(trackers)
    try:
        if logger.mlflow.enabled:
            uri = logger.mlflow.tracking_uri or Path(output_root, "mlruns").resolve().as_uri()
            trackers.append(MLflowTracker(uri, logger.mlflow.experiment or name, run_dir.name, run_dir))
        if logger.wandb.enabled:
            wandb = logger.wandb
            trackers.append(WandbTracker(wandb.project, wandb.entity, wandb.mode, run_dir.name, run_dir))
    except BaseException:
        Trackers(trackers).close(failed=True)  # the ones opened before the failure
        raise
    return Trackers(trackers)
