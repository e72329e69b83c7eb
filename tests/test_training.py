"""End-to-end CPU runs: every head and every backbone family (in this process, as train.py runs them), and the
real CLI in new processes: one head, resume, DDP."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import facetrain
from facetrain.errors import ResumeError
from tests.conftest import REPO, SMOKE, only_run_dir


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


HEAD_RUNS = [[f"loss={p.stem}"] for p in sorted((REPO / "configs" / "loss").glob("*.yaml"))]
HEAD_RUNS.append(["loss=center", "loss.base=arcface"])  # center loss on a margin head


def check_smoke_run(run_dir) -> None:
    """The smoke preset's 6 steps trained, evaluated at steps 0 and 6, checkpointed at 3 and 6, logged."""
    metrics = _metrics(run_dir)
    assert metrics["step"] == 6 and metrics["train_loss"] > 0
    assert 0.0 <= metrics["val"]["synthetic_val"]["accuracy"] <= 1.0
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert checkpoints == ["step_000000003.pt", "step_000000006.pt"]
    assert all((run_dir / "checkpoints" / f"{name}.sha256").is_file() for name in checkpoints)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    log = (run_dir / "train.log").read_text()
    assert "step 0 val synthetic_val" in log and "step 6/6" in log


@pytest.mark.parametrize("loss", HEAD_RUNS, ids=lambda args: "+".join(a.split("=", 1)[1] for a in args))
def test_short_run_per_head(train_in_process, loss, one_thread):
    check_smoke_run(train_in_process(*SMOKE, *loss))


def test_short_run_through_the_cli(run_cli, tmp_path):
    """``python train.py``: Hydra's app around the same run (its run directory and ``.hydra/`` files)."""
    result = run_cli(*SMOKE, "loss=cosface")
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    check_smoke_run(run_dir)
    assert run_dir.parent.name == "smoke_mbf_cosface_synthetic"
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()


@pytest.mark.parametrize("backbone", [["backbone=r18"], ["backbone=mbf"], ["backbone=mobilenet_v2"],
                                      ["backbone=ir_se_50"], ["backbone=vit_t"]],
                         ids=lambda args: args[0].split("=")[1])  # timm: tests/test_backbone_timm.py
def test_short_run_per_backbone_family(train_in_process, backbone, one_thread):
    run_dir = train_in_process(*SMOKE, *backbone, "trainer.max_steps=3", "trainer.batch_size=4",
                               "eval.at_start=false", "embedding_size=128")
    backbone_module = facetrain.load_backbone(run_dir)
    assert not backbone_module.training
    with torch.no_grad():
        assert backbone_module(torch.zeros(2, 3, 112, 112)).shape == (2, 128)


RESUME_ARGS = [*SMOKE, "scheduler=multistep", "scheduler.milestones=[0.25,0.75]", "eval.at_start=false",
               "checkpoint.every_steps=10", "checkpoint.keep_last=1"]


def test_resume_is_bit_identical(train_in_process, tmp_path, one_thread):
    """10 steps, then resumed to 20 (the lr drops at steps 5 and 15), equal to 20 straight (each run as train.py runs it; the same through new
    processes and a kill -9: tests/test_resilience.py)."""
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    train_in_process(*RESUME_ARGS, "trainer.max_steps=10", run_dir=interrupted)
    train_in_process(*RESUME_ARGS, "trainer.max_steps=20", f"resume={interrupted}", run_dir=interrupted)
    assert "(resuming at step 10)" in (interrupted / "train.log").read_text()
    train_in_process(*RESUME_ARGS, "trainer.max_steps=20", run_dir=straight)

    a = torch.load(interrupted / "checkpoints" / "step_000000020.pt", weights_only=False)
    b = torch.load(straight / "checkpoints" / "step_000000020.pt", weights_only=False)
    for part in ("backbone", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert _metrics(interrupted)["train_loss"] == _metrics(straight)["train_loss"]
    assert len(list((interrupted / "tensorboard").glob("events.*"))) == 2  # same curves, continued


def test_resume_honours_a_new_learning_rate_and_weight_decay(train_in_process, tmp_path, one_thread):
    """The optimizer state comes from the checkpoint, its hyperparameters from this command line: the
    lr continues the schedule from the new base lr (multistep: 0.1 ** 1 after the first milestone)."""
    run_dir = train_in_process(*RESUME_ARGS, "trainer.max_steps=6", run_dir=tmp_path / "run")
    assert train_in_process(*RESUME_ARGS, "trainer.max_steps=8", f"resume={run_dir}", "optimizer.lr=0.02",
                            "optimizer.weight_decay=0.001") == run_dir
    log = (run_dir / "train.log").read_text()
    assert "resume: optimizer lr 0.1 -> 0.02" in log
    assert "resume: optimizer weight_decay 0.0005 -> 0.001" in log
    state = torch.load(run_dir / "checkpoints" / "step_000000008.pt", weights_only=False)
    group = state["optimizer"]["param_groups"][0]  # smoke: 160 images in batches of 8, milestones at steps 5 and 15
    assert group["initial_lr"] == 0.02 and group["weight_decay"] == 0.001
    assert group["lr"] == pytest.approx(0.02 * 0.1)
    assert state["scheduler"]["base_lrs"] == [0.02]


def test_resume_auto_picks_newest_run_and_refuses_a_different_head(train_in_process, tmp_path, one_thread):
    run_dir = train_in_process(*SMOKE, "eval.at_start=false")
    assert train_in_process(*SMOKE, "trainer.max_steps=8", "resume=auto", "eval.at_start=false") == run_dir
    assert only_run_dir(tmp_path / "outputs") == run_dir
    assert _metrics(run_dir)["step"] == 8

    with pytest.raises(ResumeError, match="cannot resume with a different embedding_size"):
        train_in_process(*SMOKE, "resume=" + str(run_dir), "embedding_size=256")


def test_ddp_two_processes_share_one_run_dir(run_cli, tmp_path):
    torchrun = shutil.which("torchrun")
    assert torchrun is not None, "torchrun comes with torch"
    result = run_cli(*SMOKE, launcher=[torchrun, "--standalone", "--nproc_per_node=2"], timeout=300)
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    metrics = _metrics(run_dir)
    assert metrics["step"] == 6
    state = torch.load(run_dir / "checkpoints" / "step_000000006.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert list((run_dir / ".hydra").iterdir())  # rank 0 saved the config; nobody else wrote a second copy
    assert (run_dir / "train.log").read_text().count("step 6/6") == 1


def test_resume_auto_without_an_earlier_run_starts_a_fresh_one(run_cli, tmp_path):
    result = run_cli(*SMOKE, "resume=auto", "trainer.max_steps=2", "eval.at_start=false", "eval.targets=[]")
    assert result.returncode == 0, result.stderr
    assert "resume=auto: no earlier run of 'smoke_mbf_arcface_synthetic' with a checkpoint" in result.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    assert (run_dir / ".hydra" / "config.yaml").is_file() and _metrics(run_dir)["step"] == 2
