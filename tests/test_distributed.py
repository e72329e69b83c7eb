"""Distributed training on gloo ranks in forked processes: DDP with synchronised batch norm and a sharded
head reproduces one process with the same global batch, a run resumes from 2 ranks onto 3, gradient
accumulation, a dead rank, SLURM's environment, and the config keys."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import facetrain
import facetrain.engine.trainer as trainer_module
from facetrain.cli import run_cli
from facetrain.runs.checkpoint import load_newest_valid
from facetrain.parallel.groups import adopt_slurm_environment, first_host, set_timeout
from facetrain.config.checks import check_config
from facetrain.errors import ConfigError
from facetrain.train import shards_head
from tests.conftest import REPO, SMOKE, only_run_dir
from tests.dist_helpers import run_ranks
from tests.test_resilience import _composed, scalars
from tests.trainer_helpers import CLASSES, assert_final_weights_close, final_weights, make_trainer, next_tensorboard_second


def losses(run_dir: Path) -> list[float]:
    return [value for _, value in scalars(run_dir, "train/loss")]


def _train_worker(rank: int, world_size: int, run_dir: Path, options: dict) -> None:
    make_trainer(run_dir, world_size, rank, **options).fit()


def _resume_worker(rank: int, world_size: int, run_dir: Path) -> None:
    trainer = make_trainer(run_dir, world_size, rank, total_steps=6)
    trainer.load_state_dict(load_newest_valid(run_dir / "checkpoints")[1])
    trainer.fit()


def test_ddp_with_sync_bn_and_a_sharded_head_reproduces_one_process(tmp_path):
    make_trainer(tmp_path / "one", sharded=False).fit()  # one process: the plain head
    expected, weights = losses(tmp_path / "one"), final_weights(tmp_path / "one")
    assert len(expected) == 6 and expected[-1] < expected[0]
    for name, options in (("sharded", {}), ("data_parallel_head", {"sharded": False})):
        run_ranks(tmp_path, 2, _train_worker, tmp_path / name, options)
        assert_final_weights_close(tmp_path / name, weights, name)
    # the sharded head's loss is the global batch's (a data-parallel head logs rank 0's half)
    assert losses(tmp_path / "sharded") == pytest.approx(expected, abs=1e-4)
    # without synchronised batch norm each rank normalises its own half, and the curve differs
    run_ranks(tmp_path, 2, _train_worker, tmp_path / "local_bn", {"sync_bn": False})
    assert losses(tmp_path / "local_bn") != pytest.approx(expected, abs=1e-3)


def test_resume_from_2_ranks_onto_3_reshards_the_head_and_continues_the_curve(tmp_path):
    make_trainer(tmp_path / "one", sharded=False).fit()
    run_dir = tmp_path / "resumed"
    run_ranks(tmp_path, 2, _train_worker, run_dir, {"total_steps": 3, "checkpoint_every": 3})
    state = load_newest_valid(run_dir / "checkpoints")[1]
    assert state["world_size"] == 2 and state["head"]["weight"].shape == (CLASSES, 8)  # saved whole
    assert state["optimizer"]["state"][max(state["optimizer"]["state"])]["momentum_buffer"].shape == (CLASSES, 8)
    run_ranks(tmp_path, 3, _resume_worker, run_dir)  # 6 classes: 2 per rank
    assert losses(run_dir) == pytest.approx(losses(tmp_path / "one"), abs=1e-4)


def _counting_worker(rank: int, world_size: int, run_dir: Path, counts: Path) -> None:
    calls = []

    def counting(process_group, bucket):  # the sum hook, counted
        calls.append(1)
        return summing(process_group, bucket)

    summing = trainer_module.sum_gradients
    trainer_module.sum_gradients = counting
    trainer = make_trainer(run_dir, world_size, rank, total_steps=4, batch_norm=False, grad_accum=2)
    trainer.fit()
    torch.save({"reductions": len(calls), "scheduler_steps": trainer.scheduler.last_epoch}, counts / f"{rank}.pt")


def test_grad_accum_equals_the_large_batch_and_all_reduces_once_per_step(tmp_path):
    make_trainer(tmp_path / "one", total_steps=4, batch_norm=False, sharded=False).fit()
    make_trainer(tmp_path / "accum", total_steps=4, batch_norm=False, grad_accum=2).fit()
    expected = losses(tmp_path / "one")
    assert losses(tmp_path / "accum") == pytest.approx(expected, abs=1e-5)
    counts = tmp_path / "counts"
    counts.mkdir()
    run_ranks(tmp_path, 2, _counting_worker, tmp_path / "ddp_accum", counts)  # 3 images x 2 ranks x 2 micro-batches
    assert losses(tmp_path / "ddp_accum") == pytest.approx(expected, abs=1e-4)
    for rank in range(2):  # one bucket (a tiny model): reduced on the last micro-batch of each of the 4 steps
        assert torch.load(counts / f"{rank}.pt") == {"reductions": 4, "scheduler_steps": 4}


def test_resume_with_grad_accum_mid_epoch_is_bit_identical(tmp_path):
    straight = make_trainer(tmp_path / "straight", total_steps=6, grad_accum=2)  # 4 steps per epoch
    straight.fit()
    first = make_trainer(tmp_path / "split", total_steps=5, grad_accum=2)
    first.fit()
    next_tensorboard_second()
    second = make_trainer(tmp_path / "split", total_steps=6, grad_accum=2)
    second.load_state_dict(load_newest_valid(tmp_path / "split" / "checkpoints")[1])
    assert (second.step, second.epoch, second.batch) == (5, 1, 2)  # batch counts micro-batches
    second.fit()
    for a, b in zip(straight.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")


# ---- a rank that dies or hangs ------------------------------------------------------------------
def _cli_rank(rank: int, port: int, behaviour: str, stderr: str, timeout_s: float) -> None:
    """One rank of a 2-rank job through the real CLI wrapper: rank 1 dies or hangs after start-up."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    os.environ.pop("HYDRA_FULL_ERROR", None)
    torch.set_num_threads(1)
    with open(stderr, "w") as file:
        os.dup2(file.fileno(), 2)
    sys.stderr = os.fdopen(2, "w", buffering=1)

    def main() -> None:
        set_timeout(timeout_s)
        if rank == 1:
            if behaviour == "dies":
                os._exit(0)
            time.sleep(timeout_s * 4)
            os._exit(0)
        for _ in range(100):  # the training loop's per-step agreement, as rank 0 sees it
            torch.distributed.all_reduce(torch.ones(1))
            time.sleep(0.01)

    run_cli(main)


@pytest.mark.parametrize("behaviour", ["dies", "hangs"])
def test_surviving_rank_exits_with_a_clear_error_within_the_timeout(tmp_path, behaviour):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("fork")
    timeout_s = 2.0
    processes = [context.Process(target=_cli_rank, args=(rank, port, behaviour, str(tmp_path / f"{rank}.txt"), timeout_s))
                 for rank in range(2)]
    start = time.monotonic()
    for process in processes:
        process.start()
    processes[0].join(60)
    elapsed = time.monotonic() - start
    processes[1].kill()  # the hung rank (the dead one is gone already)
    processes[1].join(60)
    assert processes[0].exitcode == 1
    last = (tmp_path / "0.txt").read_text().strip().splitlines()[-1]
    assert last.startswith("facetrain: error: lost contact with another rank (") and "resume=auto" in last, last
    assert ("Timed out waiting 2000ms" if behaviour == "hangs" else "by peer") in last, last
    assert elapsed < timeout_s + 20  # start-up plus the timeout, not the default 30 minutes


# ---- launchers and config --------------------------------------------------------------------------
def test_srun_without_torchrun_takes_ranks_from_slurm():
    environ = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
               "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_ID": "4242"}
    adopt_slurm_environment(environ)
    assert {k: environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "11", "LOCAL_RANK": "3", "WORLD_SIZE": "16", "MASTER_ADDR": "gpu007", "MASTER_PORT": "24242"}
    torchrun = {"RANK": "2", "WORLD_SIZE": "4", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"}
    adopt_slurm_environment(torchrun)  # srun torchrun ...: torchrun's variables win
    assert torchrun["RANK"] == "2" and "MASTER_ADDR" not in torchrun
    batch_script = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"}
    adopt_slurm_environment(batch_script)  # python train.py in the batch script itself: one process
    assert "RANK" not in batch_script
    assert [first_host(n) for n in ("node1,node2", "a[09-12,20]", "login")] == ["node1", "a09", "login"]


def test_head_layout_follows_head_parallel_and_world_size():
    assert not shards_head("auto", 1.0, 1) and shards_head("auto", 1.0, 2) and shards_head("auto", 0.1, 1)
    assert shards_head("model", 1.0, 1) and not shards_head("data", 1.0, 8)
    with pytest.raises(ConfigError, match="head.sample_rate=0.1 .Partial FC. needs the sharded head"):
        shards_head("data", 0.1, 8)


@pytest.mark.parametrize(("override", "expected"), [
    ("head.sample_rate=0", "head.sample_rate=0.0 is out of range (a number in (0, 1])"),
    ("head.sample_rate=1.5", "head.sample_rate=1.5 is out of range (a number in (0, 1])"),
    ("trainer.grad_accum=0", "trainer.grad_accum=0 is out of range"),
    ("trainer.dist_timeout_s=0", "trainer.dist_timeout_s=0.0 is out of range (a number > 0)"),
])
def test_distributed_numbers_are_refused_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as caught:
        check_config(_composed("experiment=smoke", override))
    assert expected in str(caught.value)


def test_head_parallel_is_typed():
    cfg = _composed("experiment=smoke", "head.parallel=model", "trainer.sync_bn=true", "trainer.grad_accum=4")
    assert cfg.head.parallel.value == "model" and cfg.trainer.sync_bn and cfg.trainer.grad_accum == 4
    with pytest.raises(Exception, match="parallel"):
        _composed("experiment=smoke", "head.parallel=pipeline")


# ---- the real CLI under torchrun (slow: several launcher start-ups) ---------------------------------
def _torchrun(*flags: str) -> list[str]:
    return [shutil.which("torchrun") or "torchrun", *flags]


CLI_ARGS = [*SMOKE, "eval.at_start=false", "trainer.log_every=1", "checkpoint.every_steps=2"]


@pytest.mark.slow
def test_cli_resumes_a_2_rank_run_on_3_ranks_and_load_backbone_skips_the_head(run_cli, tmp_path):
    first = run_cli(*CLI_ARGS, "trainer.batch_size=6", "trainer.max_steps=2",
                    launcher=_torchrun("--standalone", "--nproc_per_node=2"), timeout=600)
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    assert "head split over 2 ranks" in (run_dir / "train.log").read_text()
    resumed = run_cli(*CLI_ARGS, "trainer.batch_size=4", "trainer.max_steps=4", f"resume={run_dir}",
                      launcher=_torchrun("--standalone", "--nproc_per_node=3"), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "written by 2 processes with a global batch of 12, this run has 3 and 12" in resumed.stderr
    state = torch.load(run_dir / "checkpoints" / "step_000000004.pt", weights_only=False)
    assert state["world_size"] == 3 and state["head"]["weight"].shape == (20, 512)
    backbone_module = facetrain.load_backbone(run_dir)
    with torch.no_grad():
        assert backbone_module(torch.zeros(1, 3, 112, 112)).shape == (1, 512)


@pytest.mark.slow
def test_cli_two_nodes_with_c10d_rendezvous(run_cli, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FACETRAIN_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    nodes = []
    for node in range(2):  # two "nodes" of one process each, on this machine
        command = _torchrun("--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1", "--rdzv_backend=c10d",
                            f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=facetrain_test")
        command += [str(REPO / "train.py"), f"output_root={tmp_path / 'outputs'}", *CLI_ARGS, "trainer.max_steps=2"]
        nodes.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / f"node{node}.txt", "w")))
    assert [node.wait(timeout=600) for node in nodes] == [0, 0], (tmp_path / "node0.txt").read_text()
    run_dir = only_run_dir(tmp_path / "outputs")
    log = (run_dir / "train.log").read_text()
    assert "head split over 2 ranks" in log and log.count("step 2/2") == 1
