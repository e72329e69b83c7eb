"""Resuming with another global batch (world size, batch size, ``trainer.grad_accum``): the run continues at
the same epoch and image, its step counter and schedule re-expressed in the new batch's steps, and it
trains exactly the configured epochs, as a run that used the new batch from the start would."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from facetrain.engine.checkpoint import load_newest_valid
from facetrain.engine.resume import position_in_steps, rescale_max_steps
from tests.dist_helpers import run_ranks
from tests.test_resilience import scalars
from tests.trainer_helpers import make_trainer

EPOCHS = 3  # 48 images


def _fit(rank: int, world_size: int, run_dir: Path, options: dict, stop_at: int = 0, resume: bool = False) -> None:
    """Train (``stop_at``: stop there, as a killed run's last checkpoint), optionally from ``run_dir``'s checkpoint."""
    handler = logging.FileHandler(run_dir.parent / f"{run_dir.name}_rank{rank}.log")
    logging.getLogger("facetrain").addHandler(handler)
    trainer = make_trainer(run_dir, world_size, rank, epochs=EPOCHS, **options)
    if stop_at:
        trainer.s.total_steps = stop_at
    if resume:
        trainer.load_state_dict(load_newest_valid(run_dir / "checkpoints")[1])
    trainer.fit()
    logging.getLogger("facetrain").removeHandler(handler)


def _launch(tmp_path: Path, world_size: int, run_dir: Path, options: dict, **kwargs) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if world_size == 1:
        _fit(0, 1, run_dir, options, **kwargs)
    else:
        run_ranks(tmp_path, world_size, _fit, run_dir, options, *kwargs.values())


def _curve(run_dir: Path, tag: str, after: int) -> list[tuple[int, float]]:
    return [(step, value) for step, value in scalars(run_dir, tag) if step > after]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """2 ranks x 6 images (global batch 12, 4 steps per epoch): killed after its checkpoint at step 6 (epoch 1.5)."""
    tmp_path = tmp_path_factory.mktemp("interrupted")
    _launch(tmp_path, 2, tmp_path / "run", {"global_batch": 12}, stop_at=6, resume=False)
    state = load_newest_valid(tmp_path / "run" / "checkpoints")[1]
    assert (state["step"], state["epoch"], state["batch_in_epoch"], state["global_batch"]) == (6, 1, 2, 12)
    return tmp_path / "run"


@pytest.mark.parametrize(("world_size", "options", "resumed_step", "total"), [
    (3, {"global_batch": 6}, 12, 24),  # more processes, smaller global batch: 8 steps per epoch
    (1, {"global_batch": 24, "grad_accum": 2}, 3, 6),  # one process accumulating 2 x 12: 2 steps per epoch
])
def test_resume_with_another_global_batch_continues_at_the_same_epoch(interrupted, tmp_path, world_size, options,
                                                                      resumed_step, total):
    reference = tmp_path / "reference"
    _launch(tmp_path, world_size, reference, options)  # the new batch from the start
    resumed = tmp_path / "resumed"
    shutil.copytree(interrupted, resumed)
    _launch(tmp_path, world_size, resumed, options, stop_at=0, resume=True)

    log = (tmp_path / "resumed_rank0.log").read_text()
    assert f"step 6 (epoch 1 + 2 of its steps) continues as step {resumed_step} of {total} at epoch 1.5000" in log
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert (metrics["step"], metrics["epoch"]) == (total, EPOCHS)  # the configured epochs, no more, no less
    assert json.loads((reference / "metrics.json").read_text())["epoch"] == EPOCHS
    for tag in ("train/lr", "train/epoch"):  # the schedule and the data position at every later step
        assert _curve(resumed, tag, resumed_step) == _curve(reference, tag, resumed_step), tag
    assert [step for step, _ in _curve(resumed, "train/lr", resumed_step)] == list(range(resumed_step + 1, total + 1))


def test_position_in_steps_rounds_down_to_a_whole_step():
    assert position_in_steps(1, 24, 6, 8) == (12, 1, 4)  # 24 images into epoch 1, steps of 6
    assert position_in_steps(1, 24, 24, 2) == (3, 1, 1)
    assert position_in_steps(2, 30, 24, 2) == (5, 2, 1)  # 6 images of the next step are trained again
    assert position_in_steps(0, 48, 24, 1) == (1, 1, 0)  # past the epoch's last whole step: the next epoch


def test_a_saved_max_steps_is_re_expressed_in_the_new_steps():
    cfg = OmegaConf.create({"trainer": {"max_steps": 100}})
    rescale_max_steps(cfg, [], {"global_batch": 1024}, 512)
    assert cfg.trainer.max_steps == 200  # the same number of images
    cfg = OmegaConf.create({"trainer": {"max_steps": 100}})
    rescale_max_steps(cfg, ["trainer.max_steps=100"], {"global_batch": 1024}, 512)
    assert cfg.trainer.max_steps == 100  # given on this command line: in this run's steps
    cfg = OmegaConf.create({"trainer": {"max_steps": None}})
    rescale_max_steps(cfg, [], {"global_batch": 1024}, 512)
    assert cfg.trainer.max_steps is None  # epochs: the schedule follows by itself
