"""Fault injection: kill -9, SIGTERM, corrupt checkpoints, NaN losses, full disks, refused resumes.

Over 400 lines on purpose: one job (what survives a fault), and its helpers (_composed, scalars, TinyFaces,
Poisoned) are imported by other test files.

The subprocess tests train the real CLI on a 40-image synthetic set (5 steps per epoch, so 8 steps
cross an epoch boundary) and compare every interrupted run with one uninterrupted baseline.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

import facetrain.runs.checkpoint as checkpoint_module
from facetrain.config import register_schemas
from facetrain.data.transforms import random_hflip, sample_uniform
from facetrain.runs.checkpoint import (FORMAT_VERSION, CheckpointError, checkpoint_path, load_newest_valid,
                                         save_checkpoint)
from facetrain.parallel.groups import DistInfo
from facetrain.engine.model import FaceModel
from facetrain.engine.nonfinite import NonFiniteError
from facetrain.runs.preemption import PREEMPTED_EXIT_CODE, Preempted
from facetrain.runs.resume import check_same_data, merge_resume_config
from facetrain.runs.run_dir import register_resolvers
from facetrain.engine.settings import TrainerSettings
from facetrain.engine.trainer import Trainer
from facetrain.config.checks import check_config
from facetrain.errors import ConfigError, ResumeError
from facetrain.heads import build_head
from tests.conftest import REPO, SMOKE, only_run_dir

ARGS = [*SMOKE, "dataset.images_per_class=2", "trainer.max_steps=8", "checkpoint.every_steps=2",
        "checkpoint.keep_last=2", "trainer.log_every=1", "eval.at_start=false"]
DDP_ARGS = [*ARGS, "trainer.batch_size=4"]  # the same global batch of 8 on 2 ranks
FINAL = "checkpoints/step_000000008.pt"
register_schemas()
register_resolvers()


# ---- running the CLI ------------------------------------------------------------------------------
def _command(output_root: Path, args: list[str], ddp: bool) -> list[str]:
    launcher = [shutil.which("torchrun") or "torchrun", "--standalone", "--nproc_per_node=2"] if ddp else [sys.executable]
    return launcher + [str(REPO / "train.py"), f"output_root={output_root}", *args]


def _env(cache_dir: Path) -> dict[str, str]:
    env = {**os.environ, "FACETRAIN_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def train(cache_dir: Path, output_root: Path, *args: str, ddp: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(_command(output_root, list(args), ddp), cwd=output_root.parent, env=_env(cache_dir),
                          capture_output=True, text=True, timeout=600)


def start(cache_dir: Path, output_root: Path, *args: str, ddp: bool = False) -> subprocess.Popen:
    """A training run in its own process group (so a signal can reach all of it, as SLURM's does)."""
    output_root.mkdir(parents=True, exist_ok=True)
    log = open(output_root.parent / "stderr.txt", "w")
    return subprocess.Popen(_command(output_root, list(args), ddp), cwd=output_root.parent, env=_env(cache_dir),
                            stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True)


def wait_for_checkpoint(output_root: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """The run directory, as soon as its checkpoint of ``step`` exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(output_root.glob(f"*/*/{checkpoint_path(Path('checkpoints'), step)}"))
        if found:
            return found[0].parents[1]
        assert proc.poll() is None, (output_root.parent / "stderr.txt").read_text()
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of step {step} after {timeout} s")


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    for part in ("backbone", "head"):
        assert first[part].keys() == second[part].keys()
        for key in first[part]:
            assert torch.equal(first[part][key], second[part][key]), f"{part}.{key} differs"


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a TensorBoard tag as TensorBoard shows it (purged steps hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def baseline(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted single-process run."""
    output_root = tmp_path_factory.mktemp("baseline") / "outputs"
    result = train(cache_dir, output_root, *ARGS)
    assert result.returncode == 0, result.stderr
    return only_run_dir(output_root)


@pytest.fixture(scope="module")
def ddp_baseline(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run on 2 gloo ranks."""
    output_root = tmp_path_factory.mktemp("ddp_baseline") / "outputs"
    result = train(cache_dir, output_root, *DDP_ARGS, ddp=True)
    assert result.returncode == 0, result.stderr
    return only_run_dir(output_root)


# ---- kill -9, SIGTERM, corrupt checkpoints (real CLI) -----------------------------------------------
def test_baseline_keeps_last_two_plus_best_with_checksums(baseline):
    names = sorted(p.name for p in (baseline / "checkpoints").iterdir())
    assert names == ["best.pt", "best.pt.sha256", "step_000000006.pt", "step_000000006.pt.sha256",
                     "step_000000008.pt", "step_000000008.pt.sha256"]
    assert [step for step, _ in scalars(baseline, "train/loss")] == list(range(1, 9))


def test_kill_9_then_resume_is_bit_identical_with_continuous_tensorboard(baseline, cache_dir, tmp_path):
    output_root = tmp_path / "outputs"
    proc = start(cache_dir, output_root, *ARGS)
    run_dir = wait_for_checkpoint(output_root, 4, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    resumed = train(cache_dir, output_root, *ARGS, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stderr
    assert_same_weights(run_dir / FINAL, baseline / FINAL)
    assert scalars(run_dir, "train/loss") == scalars(baseline, "train/loss")  # no step twice, same values
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_sigterm_to_the_process_group_checkpoints_and_resume_auto_finishes(baseline, cache_dir, tmp_path):
    output_root = tmp_path / "outputs"
    proc = start(cache_dir, output_root, *ARGS, "trainer.num_workers=1")  # a DataLoader worker gets it too
    run_dir = wait_for_checkpoint(output_root, 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE
    last = (tmp_path / "stderr.txt").read_text().strip().splitlines()[-1]
    assert last.startswith("facetrain: stopped by SIGTERM at step ") and f"resume={run_dir}" in last, last
    stopped_at = int(last.split("at step ")[1].split()[0])
    assert checkpoint_path(run_dir / "checkpoints", stopped_at).is_file()
    assert "SIGTERM received, saving a checkpoint and stopping" in (run_dir / "train.log").read_text()

    resumed = train(cache_dir, output_root, *ARGS, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stopped_at}" in resumed.stderr and only_run_dir(output_root) == run_dir
    assert_same_weights(run_dir / FINAL, baseline / FINAL)


def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(baseline, cache_dir, tmp_path):
    run_dir = tmp_path / "outputs" / "copy" / "run"
    shutil.copytree(baseline, run_dir)
    newest = run_dir / FINAL
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    (run_dir / "checkpoints" / ".step_000000008.pt.abcd.tmp").write_bytes(b"half a write killed midway")

    resumed = train(cache_dir, tmp_path / "outputs", *ARGS, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "warning: checkpoint" in resumed.stderr and "does not match its sha256" in resumed.stderr
    assert "resuming at step 6" in resumed.stderr
    assert (run_dir / "checkpoints" / "step_000000008.pt.corrupt").is_file()
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert_same_weights(run_dir / FINAL, baseline / FINAL)


def test_nan_loss_stops_naming_step_loss_and_remedies(run_cli, tmp_path):
    result = run_cli(*SMOKE, "optimizer.lr=1e30", "trainer.max_steps=12", "trainer.log_every=1",
                     "checkpoint.every_steps=100", "eval.at_start=false")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("facetrain: error: the loss or its gradients were NaN/Inf for 5 consecutive steps from step ")
    assert "(loss nan)" in last and "lower optimizer.lr" in last and "trainer.grad_clip" in last, last
    assert "Traceback" not in result.stderr


def test_ddp_kill_9_then_resume_is_bit_identical(ddp_baseline, cache_dir, tmp_path):
    output_root = tmp_path / "outputs"
    proc = start(cache_dir, output_root, *DDP_ARGS, ddp=True)
    run_dir = wait_for_checkpoint(output_root, 4, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, like a node going down
    proc.wait()

    resumed = train(cache_dir, output_root, *DDP_ARGS, f"resume={run_dir}", ddp=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(run_dir / FINAL, ddp_baseline / FINAL)


def test_ddp_sigterm_to_torchrun_stops_every_rank_at_one_step(ddp_baseline, cache_dir, tmp_path):
    output_root = tmp_path / "outputs"
    proc = start(cache_dir, output_root, *DDP_ARGS, ddp=True)
    run_dir = wait_for_checkpoint(output_root, 2, proc)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    assert proc.wait(timeout=120) != 0
    log = (run_dir / "train.log").read_text()
    assert log.count("SIGTERM received, saving a checkpoint and stopping") == 1, log

    resumed = train(cache_dir, output_root, *DDP_ARGS, "resume=auto", ddp=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(run_dir / FINAL, ddp_baseline / FINAL)


# ---- checkpoint files (in process) ------------------------------------------------------------------
def _state(value: float) -> dict:
    return {"weights": torch.full((4,), value)}


@pytest.mark.parametrize(("error", "reason"), [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_failed_write_leaves_earlier_checkpoints_and_says_why(tmp_path, monkeypatch, error, reason):
    directory = tmp_path / "run" / "checkpoints"
    earlier = save_checkpoint(_state(1.0), checkpoint_path(directory, 1))

    def fail_midway(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(checkpoint_module.torch, "save", fail_midway)
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(_state(2.0), checkpoint_path(directory, 2))
    message = str(caught.value)
    assert "could not write checkpoint" in message and reason in message and f"resume={tmp_path / 'run'}" in message
    assert "\n" not in message
    monkeypatch.undo()
    assert sorted(p.name for p in directory.iterdir()) == [earlier.name, earlier.name + ".sha256"]
    assert load_newest_valid(directory)[1]["weights"].eq(1.0).all()


def test_unreadable_checkpoint_without_checksum_falls_back(tmp_path):
    directory = tmp_path / "checkpoints"
    save_checkpoint(_state(1.0), checkpoint_path(directory, 1))
    broken = checkpoint_path(directory, 2)
    broken.write_bytes(b"not a checkpoint")  # e.g. copied without its sidecar
    path, state = load_newest_valid(directory)
    assert path == checkpoint_path(directory, 1) and state["weights"].eq(1.0).all()
    assert (directory / (broken.name + ".corrupt")).is_file()


def test_checkpoint_from_a_newer_format_is_refused_not_skipped(tmp_path):
    directory = tmp_path / "checkpoints"
    save_checkpoint(_state(1.0), checkpoint_path(directory, 1))
    save_checkpoint({**_state(2.0), "format_version": FORMAT_VERSION + 1}, checkpoint_path(directory, 2))
    with pytest.raises(ResumeError, match=f"format version {FORMAT_VERSION + 1}, newer than .*upgrade facetrain"):
        load_newest_valid(directory)


# ---- resume validation (in process) -----------------------------------------------------------------
def _composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "named"),
    [("backbone=r18", "backbone"), ("loss=cosface", "loss.name"), ("embedding_size=256", "embedding_size"),
     ("dataset.num_classes=30", "dataset.num_classes"), ("dataset.name=rec", "dataset.name")],
)
def test_resume_refuses_changes_to_what_is_trained(override, named):
    saved = OmegaConf.to_container(_composed("experiment=smoke"), resolve=True, enum_to_str=True)
    with pytest.raises(ResumeError, match=f"cannot resume with a different .*{named}"):
        merge_resume_config(_composed("experiment=smoke", override, "resume=auto"), [override], saved)


def test_resume_allows_a_longer_schedule():
    saved = OmegaConf.to_container(_composed("experiment=smoke"), resolve=True, enum_to_str=True)
    merged = merge_resume_config(_composed("experiment=smoke", "trainer.max_steps=40"), ["trainer.max_steps=40"], saved)
    assert merged.trainer.max_steps == 40


def test_resume_refuses_a_dataset_of_another_size():
    state = {"data": {"images": 40, "classes": 20}}
    check_same_data(state, 40, 20)
    with pytest.raises(ResumeError, match=r"number of images \(40 then, 41 now\)"):
        check_same_data(state, 41, 20)


@pytest.mark.parametrize(
    ("override", "expected"),
    [("trainer.batch_size=-4", "trainer.batch_size=-4 is out of range (an integer >= 1); pass e.g. trainer.batch_size=128"),
     ("trainer.log_every=0", "trainer.log_every=0 is out of range"),
     ("checkpoint.keep_last=-1", "checkpoint.keep_last=-1 is out of range"),
     ("trainer.hflip=1.5", "trainer.hflip=1.5 is out of range (a number in [0, 1])"),
     ("trainer.grad_clip=0", "trainer.grad_clip=0.0 is out of range (a number > 0, or null)")],
)
def test_out_of_range_numbers_are_refused_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as caught:
        check_config(_composed("experiment=smoke", override))
    assert expected in str(caught.value)


def test_negative_batch_size_is_one_line_from_the_cli(run_cli):
    result = run_cli(*SMOKE, "trainer.batch_size=-4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "facetrain: error: trainer.batch_size=-4 is out of range (an integer >= 1); pass e.g. trainer.batch_size=128")


# ---- the trainer (in process, a tiny model) ---------------------------------------------------------
class TinyFaces(Dataset):
    """24 random 3x8x8 uint8 images of 4 identities."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % 4


class Poisoned(nn.Module):
    """A linear backbone whose output is NaN on the given (1-based) training steps."""

    def __init__(self, bad_steps: set[int]) -> None:
        super().__init__()
        self.linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8))
        self.bad_steps, self.calls = bad_steps, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(images)
        return out * float("nan") if self.calls in self.bad_steps else out


def tiny_trainer(run_dir: Path, total_steps: int, bad_steps: set[int] = frozenset(), **overrides) -> Trainer:
    torch.manual_seed(0)
    model = FaceModel(Poisoned(set(bad_steps)), build_head("cosface", 8, 4, s=16.0, m=0.2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = dict(run_dir=run_dir, total_steps=total_steps, batch_size=4, seed=0, device=torch.device("cpu"),
                    amp_dtype=None, grad_clip=None, log_every=1, num_workers=0, hflip=0.5, channels_last=False,
                    checkpoint_every=2, keep_last=0, save_best=False, best_metric=None, max_nonfinite=3,
                    eval_every=0, eval_at_start=False, progress_bar=False, config={})
    settings.update(overrides)
    return Trainer(model, optimizer, scheduler, TinyFaces(), TrainerSettings(**settings), DistInfo())


def _weights(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=False)["backbone"]["linear.1.weight"]


def test_nan_steps_are_skipped_on_the_device_and_the_run_stops_after_max_nonfinite(tmp_path):
    trainer = tiny_trainer(tmp_path, total_steps=12, bad_steps={5, 6, 7, 8})
    with pytest.raises(NonFiniteError, match=r"for 3 consecutive steps from step 5 \(loss nan\)"):
        trainer.fit()
    assert trainer.step == 7  # checked at each log line: stopped as soon as the third bad step ended
    directory = tmp_path / "checkpoints"
    assert [p.name for p in sorted(directory.glob("step_*.pt"))] == ["step_000000002.pt", "step_000000004.pt",
                                                                     "step_000000006.pt"]
    assert torch.equal(_weights(directory / "step_000000006.pt"), _weights(directory / "step_000000004.pt"))
    assert torch.isfinite(trainer.model.backbone.linear[1].weight).all()


def test_a_transient_nan_step_is_skipped_and_training_goes_on(tmp_path):
    trainer = tiny_trainer(tmp_path, total_steps=6, bad_steps={3})
    assert trainer.fit()["step"] == 6
    assert torch.isfinite(_weights(tmp_path / "checkpoints" / "step_000000006.pt")).all()


def test_resume_mid_epoch_in_process_is_bit_identical(tmp_path):
    straight = tiny_trainer(tmp_path / "straight", total_steps=10)  # 6 steps per epoch
    straight.fit()
    first = tiny_trainer(tmp_path / "split", total_steps=7, checkpoint_every=0)
    first.fit()
    second = tiny_trainer(tmp_path / "split", total_steps=10)
    second.load_state_dict(load_newest_valid(tmp_path / "split" / "checkpoints")[1])
    assert (second.epoch, second.batch) == (1, 1)
    second.fit()
    assert torch.equal(_weights(tmp_path / "split" / "checkpoints" / "step_000000010.pt"),
                       _weights(tmp_path / "straight" / "checkpoints" / "step_000000010.pt"))


def test_sigusr1_finishes_the_step_and_checkpoints(tmp_path):
    trainer = tiny_trainer(tmp_path, total_steps=12, checkpoint_every=0)
    trainer.model.backbone.register_forward_hook(
        lambda module, args, out: os.kill(os.getpid(), signal.SIGUSR1) if module.calls == 3 else None)
    with pytest.raises(Preempted, match="stopped by SIGUSR1 at step 3"):
        trainer.fit()
    assert checkpoint_path(tmp_path / "checkpoints", 3).is_file()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored


# ---- per-sample randomness ---------------------------------------------------------------------------
def test_flip_depends_only_on_seed_epoch_and_index():
    indices = torch.arange(1000)
    draws = sample_uniform(0, 3, indices)
    assert torch.equal(sample_uniform(0, 3, indices.flip(0)), draws.flip(0))  # not on batch position
    assert 0.45 < (draws < 0.5).float().mean() < 0.55
    assert not torch.equal(draws, sample_uniform(0, 4, indices)) and not torch.equal(draws, sample_uniform(1, 3, indices))
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    flipped = random_hflip(images, indices[:4], 0, 3, 0.5)
    for i in range(4):
        assert torch.equal(flipped[i], images[i].flip(2) if draws[i] < 0.5 else images[i])
