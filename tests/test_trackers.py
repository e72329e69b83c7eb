"""Experiment trackers beside TensorBoard: a run with ``logger=[tensorboard,mlflow,wandb]`` leaves its scalars,
its resolved config and its final metrics in MLflow's file store (read back with MLflow's client) and in a W&B
offline run (read back from W&B's own records, as ``wandb sync`` would upload them); a resumed run continues
both. W&B runs offline: nothing here reaches a network."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from facetrain.runs.tensorboard import LOSS_TAG, accuracy_tag
from facetrain.runs.trackers import open_trackers
from facetrain.errors import ConfigError
from tests.conftest import REPO, SMOKE

TRACKED = [*SMOKE, "trainer.max_steps=2", "eval.at_start=false", "dataset.val_pairs=20",
           "logger=[tensorboard,mlflow,wandb]", "logger.wandb.mode=offline"]
NAME = "smoke_mbf_arcface_synthetic"  # experiment=smoke names its runs after itself


def train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(cwd / "wandb-config"), "WANDB_CACHE_DIR": str(cwd / "wandb-cache"),
           "WANDB_DATA_DIR": str(cwd / "wandb-data")}
    command = [sys.executable, str(REPO / "train.py"), f"output_root={cwd / 'outputs'}", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("tracked")
    result = train(cwd, *TRACKED)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (cwd / "outputs" / NAME).iterdir()
    return run_dir


def mlflow_run(run_dir: Path):
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((run_dir.parents[1] / "mlruns").as_uri())  # the default store: <output_root>/mlruns
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def history(client, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def test_mlflow_holds_the_runs_scalars_config_and_final_metrics(tracked_run):
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    client, run = mlflow_run(tracked_run)
    assert run.info.status == "FINISHED" and run.info.run_name == tracked_run.name
    assert run.data.tags["facetrain.run_dir"] == str(tracked_run)
    assert history(client, run, LOSS_TAG) == [(2, pytest.approx(metrics["train_loss"]))]
    assert history(client, run, accuracy_tag("synthetic_val")) == [(2, metrics["val"]["synthetic_val"]["accuracy"])]
    tags = {"train/lr", "train/grad_norm", "train/throughput", "hparams/synthetic_val/best_accuracy"}
    assert tags <= set(run.data.metrics)
    params = run.data.params
    assert (params["loss.name"], params["loss.m"], params["trainer.max_steps"], params["eval.targets"]) == (
        "arcface", "0.5", "2", "['synthetic_val']")


def wandb_records(run_dir: Path) -> list:
    """The records of the run's offline ``.wandb`` file, parsed with W&B's protobuf ``Record``: the file is
    W&B's LevelDB-style log (a 7-byte header, 32 KiB blocks of chunks: crc32, length, type, data)."""
    from wandb.proto.wandb_internal_pb2 import Record

    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, position, block = [], b"", 7, 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little of the block left for a chunk header: padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            break
        pending += chunk
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_a_wandb_offline_run_holds_them(tracked_run):
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    records = wandb_records(tracked_run)
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.HasField("history")]
    (row,) = [row for row in rows if LOSS_TAG in row]
    assert row["_step"] == 2 and row[LOSS_TAG] == pytest.approx(metrics["train_loss"])
    assert any(row.get(accuracy_tag("synthetic_val")) == metrics["val"]["synthetic_val"]["accuracy"] for row in rows)
    config = {item.key: json.loads(item.value_json)
              for r in records if r.HasField("config") for item in r.config.update}
    assert config["loss"]["m"] == 0.5 and config["trainer"]["max_steps"] == 2
    summary = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for r in records if r.HasField("summary") for item in r.summary.update}
    assert summary["hparams/synthetic_val/best_accuracy"] == metrics["best"]["synthetic_val"]["accuracy"]


def test_a_resumed_run_continues_its_tracker_runs(tracked_run):
    result = train(tracked_run.parents[2], f"resume={tracked_run}", "trainer.max_steps=4")
    assert result.returncode == 0, result.stderr
    client, run = mlflow_run(tracked_run)  # still one run
    assert [step for step, _ in history(client, run, LOSS_TAG)] == [2, 4] and run.info.status == "FINISHED"
    ids = {path.name.rsplit("-", 1)[1] for path in (tracked_run / "wandb").glob("offline-run-*")}
    assert len(list((tracked_run / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1  # the same W&B run


def test_a_missing_tracker_is_one_line_naming_its_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow fails as when it is not installed
    logger = OmegaConf.create({"mlflow": {"enabled": True, "tracking_uri": None, "experiment": None},
                               "wandb": {"enabled": False}})
    with pytest.raises(ConfigError) as caught:
        open_trackers(logger, tmp_path, NAME, str(tmp_path), is_main=True)
    assert str(caught.value) == ("logger=mlflow needs facetrain's 'mlflow' extra, which is not installed; "
                                 'pip install -e ".[mlflow]"')


@pytest.mark.parametrize("logger", ["[tensorboard,nope]", "[nope]", "nope"])
def test_an_unknown_logger_is_one_line_naming_the_options(tmp_path, logger):
    """Hydra names the options of a single choice, not of a member of a list: facetrain names them for both."""
    result = train(tmp_path, *SMOKE, f"logger={logger}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "facetrain: error: unknown logger 'nope'; choose one of: mlflow, tensorboard, wandb"]
    assert not (tmp_path / "outputs").exists()
