"""Sweeps (``python train.py -m``): one normal run directory per job in the sweep's folder under ``output_root``,
the sweep's summary (sweep.json, sweep.md, compare.png), Hydra's basic launcher, its submitit launcher on this
machine (with a preempted job re-queued and resumed), its Optuna sweeper, and the SLURM launcher's config."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import get_class
from omegaconf import OmegaConf

from facetrain.runs.failure import describe_error
from facetrain.runs.run_dir import job_dirname
from facetrain.cli import prepare_hydra
from facetrain.config.plugins import SLURM_COMMANDS
from facetrain.sweeps.sweep import job_labels, sweep_jobs
from tests.conftest import REPO, SMOKE

SHORT = [*SMOKE, "trainer.max_steps=2", "eval.at_start=false", "dataset.val_pairs=20"]
LOSSES = "loss=arcface,cosface"


def train(cwd: Path, *args: str, wait: bool = True, path: str | None = None) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python train.py -m <args>`` in ``cwd``, writing under ``cwd/outputs`` (``path``: its PATH)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"PATH": path} if path is not None else {})}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, str(REPO / "train.py"), "-m", f"output_root={cwd / 'outputs'}", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def only_sweep(cwd: Path) -> Path:
    sweeps = list((cwd / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def summary(sweep: Path) -> dict:
    return json.loads((sweep / "sweep.json").read_text())


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("basic")
    result = train(cwd, *SHORT, LOSSES)
    assert result.returncode == 0, result.stderr
    return only_sweep(cwd)


@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("submitit")
    result = train(cwd, "hydra/launcher=submitit_local", *SHORT, LOSSES)
    assert result.returncode == 0, result.stderr
    return only_sweep(cwd)


def check_sweep(sweep: Path) -> None:
    """Two normal run directories named after the run and its overrides, and a summary that agrees with them."""
    jobs = sweep_jobs(sweep)
    dirname = "dataset.val_pairs=20,eval.at_start=False,experiment=smoke,{},trainer.max_steps=2"
    assert [job.name for job in jobs] == [f"smoke_mbf_arcface_synthetic_{dirname.format('loss=arcface')}",
                                          f"smoke_mbf_cosface_synthetic_{dirname.format('loss=cosface')}"]
    assert not (sweep.parents[2] / "multirun").exists()  # nothing in the current directory
    for job in jobs:
        assert (job / ".hydra" / "config.yaml").is_file() and (job / "train.log").is_file()
        assert [p.name for p in (job / "checkpoints").glob("step_*.pt")] == ["step_000000002.pt"]
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
    found = summary(sweep)
    assert [job["dir"] for job in found["jobs"]] == [job.name for job in jobs]
    for job, row in zip(jobs, found["jobs"]):
        metrics = json.loads((job / "metrics.json").read_text())
        assert row["status"] == "completed" and row["error"] is None
        assert (row["step"], row["train_loss"], row["val"], row["best"]) == (
            2, metrics["train_loss"], metrics["val"], metrics["best"])
        assert row["objective"] == {"target": "synthetic_val", "value": metrics["best"]["synthetic_val"]["accuracy"]}
    best = max(found["jobs"], key=lambda row: row["objective"]["value"])
    assert found["best"]["dir"] == best["dir"]
    table = (sweep / "sweep.md").read_text().splitlines()
    assert ("| job | overrides | status | steps | final loss | synthetic_val final | synthetic_val best (step) |"
            in table)
    assert any(line.startswith("| 0 | `loss=arcface` | completed | 2 |") for line in table)
    assert any(line.startswith("| 1 | `loss=cosface` | completed | 2 |") for line in table)
    assert (sweep / "compare.png").stat().st_size > 0
    assert job_labels(jobs) == ["loss=arcface", "loss=cosface"]


def test_a_sweep_writes_a_run_directory_per_job_and_a_summary(basic_sweep):
    check_sweep(basic_sweep)
    assert basic_sweep.parent == basic_sweep.parents[1] / "multirun"


def test_the_same_sweep_through_submitit_local_gives_the_same_runs(basic_sweep, submitit_sweep):
    check_sweep(submitit_sweep)
    assert (submitit_sweep / ".submitit").is_dir()
    here, there = summary(basic_sweep)["jobs"], summary(submitit_sweep)["jobs"]
    assert [row["train_loss"] for row in here] == [row["train_loss"] for row in there]


def test_compare_runs_takes_the_sweep_folder(basic_sweep, tmp_path):
    output = tmp_path / "compare.png"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_runs.py"), str(basic_sweep),
                             "--output", str(output)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[2].split()[:3] == ["loss=arcface", "2", f"{summary(basic_sweep)['jobs'][0]['train_loss']:.4f}"]
    assert rows[3].split()[0] == "loss=cosface" and output.is_file()


@pytest.mark.long
def test_an_optuna_sweep_names_its_best_trial(tmp_path):
    result = train(tmp_path, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
                   "loss.m=interval(0.3,0.6)", *SHORT)
    assert result.returncode == 0, result.stderr
    found = summary(only_sweep(tmp_path))
    assert len(found["jobs"]) == 3 and all(row["status"] == "completed" for row in found["jobs"])
    margins = [float(next(o for o in row["overrides"] if o.startswith("loss.m="))[7:]) for row in found["jobs"]]
    assert all(0.3 <= m <= 0.6 for m in margins)
    values = [row["objective"]["value"] for row in found["jobs"]]
    best = found["jobs"][values.index(max(values))]  # maximised: the first of the best, as Optuna's best trial
    assert found["best"]["job"] == best["job"]
    assert found["study"]["best_value"] == max(values)
    assert found["study"]["best_params"] == {"loss.m": margins[values.index(max(values))]}
    assert f"Best: job {best['job']} (`loss.m=" in (only_sweep(tmp_path) / "sweep.md").read_text()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.long
def test_a_preempted_submitit_job_saves_is_requeued_and_resumes(tmp_path):
    """A job of two processes (ranks from submitit, as from SLURM); SIGUSR1 (submitit's preemption signal as
    facetrain sets it) to one of them: both stop at one step with a checkpoint, submitit's checkpoint hook
    re-queues the job, which continues from the checkpoint to the end."""
    process = train(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "sweep.name=preempted",
                    *SMOKE, "trainer.max_steps=24", "checkpoint.every_steps=2", "eval.at_start=false",
                    "dataset.val_pairs=20", wait=False)
    sweep = tmp_path / "outputs" / "multirun" / "preempted"
    deadline = time.monotonic() + 240
    while not list(sweep.glob("*/checkpoints/step_*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[1]
    controller = next(int(p.name) for p in (sweep / ".submitit").iterdir() if p.name.isdigit())  # local job id
    tasks = children(controller)
    assert len(tasks) == 2
    os.kill(tasks[-1], signal.SIGUSR1)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    (job,) = sweep_jobs(sweep)
    log = (job / "train.log").read_text()
    assert "head split over 2 ranks" in log
    assert "SIGUSR1 received, saving a checkpoint and stopping" in log
    stopped_at = int(log.split(": SIGUSR1 received")[0].rsplit("step ", 1)[1])
    assert f"(resuming at step {stopped_at})" in log and 2 <= stopped_at < 24
    assert json.loads((job / "metrics.json").read_text())["step"] == 24
    assert summary(sweep)["jobs"][0]["status"] == "completed"


def test_resume_continues_a_sweep_job_as_a_run(basic_sweep, tmp_path):
    job = sweep_jobs(basic_sweep)[0]
    command = [sys.executable, str(REPO / "train.py"), f"resume={job}", "trainer.max_steps=4"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming at step 2" in result.stderr
    assert json.loads((job / "metrics.json").read_text())["step"] == 4
    assert (job / "checkpoints" / "step_000000004.pt").is_file()
    assert list((job / ".hydra").glob("resume_*/overrides.yaml"))  # beside, not over, the job's own config


@pytest.fixture
def configs():
    prepare_hydra()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        yield


def test_the_slurm_launcher_runs_one_process_per_gpu(configs):
    cfg = compose("train", overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=8",
                                      "hydra.launcher.partition=gpu", *SMOKE], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["partition"]) == (8, 8, "gpu")
    assert launcher["max_num_timeout"] == 100 and launcher["submitit_folder"].endswith("/.submitit/%j")
    assert get_class(launcher.pop("_target_")).__name__ == "SlurmLauncher"  # Hydra's own, unchanged
    one = compose("train", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert OmegaConf.select(one, "hydra.launcher.tasks_per_node") == 1  # no GPU asked for: one process


def test_a_missing_plugin_is_one_line_naming_its_extra():
    missing = MissingConfigException("Could not find 'hydra/launcher/submitit_slurm'", "hydra/launcher/submitit_slurm")
    assert describe_error(missing) == ("hydra/launcher=submitit_slurm needs facetrain's 'slurm' extra, which is not "
                                       'installed; pip install -e ".[slurm]"')
    missing = MissingConfigException("Could not find 'hydra/sweeper/optuna'", "hydra/sweeper/optuna")
    assert describe_error(missing).endswith('pip install -e ".[optuna]"')


def test_a_bad_sweep_name_is_refused_before_anything_is_written(tmp_path):
    result = train(tmp_path, "sweep.name=a/b", *SHORT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "facetrain: error: sweep.name=a/b is not a folder name; pass e.g. sweep.name=heads")
    assert not (tmp_path / "outputs").exists()


def path_without_slurm(*extra: Path) -> str:
    """A PATH of ``extra`` and this machine's PATH less every folder holding a SLURM command."""
    folders = [folder for folder in os.environ["PATH"].split(os.pathsep)
               if not any((Path(folder) / command).exists() for command in SLURM_COMMANDS)]
    return os.pathsep.join([*map(str, extra), *folders])


@pytest.mark.parametrize("present", [(), ("srun", "sacct")], ids=["no-slurm", "no-sbatch"])
def test_the_slurm_launcher_without_slurm_is_one_line_naming_the_missing_commands(tmp_path, present):
    """submitit stops on a missing srun with a RuntimeError of its own; with srun there, starting sbatch fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in present:  # stand-ins that do nothing
        (bin_dir / command).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / command).chmod(0o755)
    result = train(tmp_path, "hydra/launcher=submitit_slurm", *SHORT, path=path_without_slurm(bin_dir))
    missing = ", ".join(command for command in SLURM_COMMANDS if command not in present)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"facetrain: error: hydra/launcher=submitit_slurm runs SLURM's {missing}, which this machine does not have "
        "(not on the PATH); run the sweep where SLURM is (a login node), or use hydra/launcher=submitit_local to run "
        "its jobs on this machine, or run without -m for a single run"]


def test_a_job_directory_name_past_255_bytes_keeps_its_start_and_ends_in_a_hash():
    """Many overrides made Hydra fail with 'File name too long': the name is cut to 255 bytes, the same job always
    gets the same directory (a sweep run again finds its jobs) and two jobs differing only at the end never share one."""
    short = job_dirname("run", "loss=arcface")
    assert short == "run_loss=arcface"
    overrides = ",".join(f"dataset.some_long_key_{i}=/data/é/{i}" for i in range(12))
    long = job_dirname("run", overrides)
    assert len(long.encode()) <= 255 and long.startswith("run_dataset.some_long_key_0=_data_é_0")
    assert long == job_dirname("run", overrides) != job_dirname("run", overrides + "x")
    assert "/" not in long
