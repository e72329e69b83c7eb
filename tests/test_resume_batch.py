"""Resuming with another global batch (world size, batch size, ``trainer.grad_accum``): the run continues at
the same epoch and image, its step counter and schedule re-expressed in the new batch's steps, and it
trains exactly the configured epochs, as a run that used the new batch from the start would."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from omegaconf import OmegaConf

from facetrain.runs.checkpoint import load_newest_valid
from facetrain.runs.resume import re_express_step, rescale_max_steps
from tests.dist_helpers import run_ranks
from tests.test_resilience import scalars
from facetrain.engine.trainer import Trainer
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


def test_a_step_is_re_expressed_at_the_same_epoch_and_image_rounded_down_to_a_whole_step():
    assert re_express_step(6, 12, 6, 48) == 12  # epoch 1 + 24 images: steps of 6, 8 an epoch
    assert re_express_step(6, 12, 24, 48) == 3
    assert re_express_step(21, 6, 24, 48) == 5  # epoch 2 + 30 images: 6 of the next step are trained again
    assert re_express_step(20, 5, 15, 50) == 6  # epoch 2 of 50 images; steps of 15 hold 45 of them
    assert re_express_step(30, 5, 15, 50) == 9  # epoch 3, where the old rule (by images) made it 10
    assert re_express_step(9, 5, 20, 50) == 2  # epoch 0 + 45 images, past its last whole step of 20: epoch 1
    assert re_express_step(13, 15, 5, 50) == 43  # a smaller batch: epoch 4 + 15 images


def test_a_saved_max_steps_is_re_expressed_in_the_new_steps():
    cfg = OmegaConf.create({"trainer": {"max_steps": 100}})
    rescale_max_steps(cfg, [], {"global_batch": 1024}, 512, 1024 * 50)
    assert cfg.trainer.max_steps == 200  # the same number of images when the batches divide the dataset
    cfg = OmegaConf.create({"trainer": {"max_steps": 30}})
    rescale_max_steps(cfg, [], {"global_batch": 5}, 15, 50)
    assert cfg.trainer.max_steps == 9  # else the same place in the data: epoch 3, not 150 images (epoch 3.33)
    rescale_max_steps(cfg, [], {"global_batch": 5}, 60, 50)
    assert cfg.trainer.max_steps == 9  # a batch larger than the dataset: left to build_trainer's refusal
    cfg = OmegaConf.create({"trainer": {"max_steps": 100}})
    rescale_max_steps(cfg, ["trainer.max_steps=100"], {"global_batch": 1024}, 512, 1024 * 50)
    assert cfg.trainer.max_steps == 100  # given on this command line: in this run's steps
    cfg = OmegaConf.create({"trainer": {"max_steps": None}})
    rescale_max_steps(cfg, [], {"global_batch": 1024}, 512, 1024 * 50)
    assert cfg.trainer.max_steps is None  # epochs: the schedule follows by itself


# ---- a budget of trainer.max_steps on a dataset the batches do not divide (50 images: batch 5 trains 50 an
# epoch, batch 15 trains 45): the run ends at the same data position, through one rule for both numbers

BUDGET_IMAGES = 50


def _data_position(trainer: Trainer) -> tuple[int, int]:
    """``(epoch, images into it)``: the place in the data order (which is the same for every batch)."""
    return trainer.epoch, trainer.batch * trainer.sampler.global_batch


def _budget_run(run_dir: Path, batch: int, max_steps: Optional[int], accum: int = 1, stop_at: int = 0,
                resume: bool = False, epochs: Optional[int] = None) -> tuple[Trainer, list[tuple[int, int]],
                                                                       list[tuple[tuple[int, int], float]]]:
    """A ``max_steps`` (or ``epochs``) run on 50 images as ``train.py`` builds it (a resumed one: ``max_steps``
    of the checkpoint's batch re-expressed by :func:`rescale_max_steps`): the trainer, the ``(epoch, index)``
    of every image trained, and ``(data position, lr)`` where it starts and after every step."""
    state = load_newest_valid(run_dir / "checkpoints")[1] if resume else None
    if state is not None and max_steps is not None:
        cfg = OmegaConf.create({"trainer": {"max_steps": max_steps}})
        rescale_max_steps(cfg, [], state, batch, BUDGET_IMAGES)
        max_steps = cfg.trainer.max_steps
    trainer = make_trainer(run_dir, images=BUDGET_IMAGES, global_batch=batch, grad_accum=accum, max_steps=max_steps,
                           epochs=epochs)
    if stop_at:
        trainer.s.total_steps = stop_at
    if state is not None:
        trainer.load_state_dict(state)
    samples: list[tuple[int, int]] = []
    train_step = trainer.train_step

    def record_samples(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> bool:
        samples.extend((trainer.epoch, index) for index in indices.tolist())
        return train_step(images, labels, indices)

    trainer.train_step = record_samples
    lrs = [(_data_position(trainer), trainer.optimizer.param_groups[0]["lr"])]
    optimizer_step = trainer.optimizer_step

    def record_lr() -> None:
        optimizer_step()
        lrs.append((_data_position(trainer), trainer.optimizer.param_groups[0]["lr"]))

    trainer.optimizer_step = record_lr
    trainer.fit()
    return trainer, samples, lrs


def _uninterrupted_schedule(tmp_path: Path, batch: int, max_steps: int) -> Callable[[int, float], float]:
    """The lr of an uninterrupted run with steps of ``batch`` images at ``(epoch, images into it)``, between
    its steps too (its schedule, poly with one epoch of warm-up, at the fractional step)."""
    trainer = make_trainer(tmp_path / "schedule", images=BUDGET_IMAGES, global_batch=batch, max_steps=max_steps)
    base, factor, steps_per_epoch = trainer.scheduler.base_lrs[0], trainer.scheduler.lr_lambdas[0], trainer.steps_per_epoch
    return lambda epoch, images: base * factor(epoch * steps_per_epoch + images / batch)


@pytest.mark.parametrize(("batch", "max_steps", "stop_at", "new_batch", "accum"), [
    (5, 30, 20, 15, 3),  # the report: 3 epochs of 50 images, stopped at epoch 2, resumed accumulating 3 x 5
    (5, 30, 23, 15, 1),  # stopped mid-epoch (epoch 2 + 15 images)
    (5, 30, 7, 15, 1),  # stopped in the warm-up (epoch 0 + 35 images, rounded down to 30)
    (5, 29, 12, 15, 1),  # ends at epoch 2 + 45 images, all that epoch 2 holds for steps of 15
    (15, 8, 5, 5, 1),  # a smaller batch: 45 images an epoch before, 50 after; ends mid-epoch (2 + 30 images)
    (5, 27, 13, 10, 1),  # ends at epoch 2 + 35 images, which the new steps round down
])
def test_resume_with_another_batch_keeps_the_budget_and_the_schedule_of_max_steps(tmp_path, batch, max_steps, stop_at,
                                                                                  new_batch, accum):
    run = tmp_path / "run"
    uninterrupted, planned, _ = _budget_run(tmp_path / "uninterrupted", batch, max_steps)
    _, before, _ = _budget_run(run, batch, max_steps, stop_at=stop_at)
    resumed, after, lrs_after = _budget_run(run, new_batch, max_steps, accum, resume=True)

    assert len(planned) == max_steps * batch and abs(len(before) + len(after) - len(planned)) <= new_batch
    # the planned end: no image past it, and short of it by less than one new step (rounded down); earlier
    # epochs may differ by the images that one batch drops at an epoch's end and the other does not
    last_epoch = uninterrupted.epoch
    trained, planned = ({sample for sample in samples if sample[0] >= last_epoch} for samples in (before + after, planned))
    assert trained <= planned and len(planned - trained) < new_batch, sorted(trained - planned)
    assert len(lrs_after) > 1 and resumed.step == resumed.s.total_steps
    # the lr at every data position from the resume on is the uninterrupted run's there, up to one new step
    schedule = _uninterrupted_schedule(tmp_path, batch, max_steps)
    for (epoch, images), lr in lrs_after:
        nearby = [schedule(epoch, images + shift) for shift in range(-new_batch, new_batch + 1)]  # image by image
        assert min(nearby) - 1e-12 <= lr <= max(nearby) + 1e-12, ((epoch, images), lr, nearby)
    if (batch, max_steps, stop_at, new_batch) == (5, 30, 20, 15):  # the report's figures, exactly
        assert (resumed.s.total_steps, resumed.resumed_from, lrs_after[0][0]) == (9, 20, (2, 0))
        assert (len(after), resumed.epoch_position) == (45, 3.0)
        at_epoch_starts = [(epoch, lr) for (epoch, images), lr in lrs_after if images == 0]
        assert at_epoch_starts == [(2, pytest.approx(schedule(2, 0))), (3, schedule(3, 0))]  # whole epochs: exact


def test_resume_with_another_batch_of_max_epochs_continues_as_a_run_with_the_new_batch(tmp_path):
    """``max_epochs`` on 50 images: batch 5 stopped at epoch 2 + 15 images, resumed with batch 15; from there on
    the data positions and the lr (warm-up and poly in epochs) of a run with batch 15 from the start."""
    reference, _, lrs_reference = _budget_run(tmp_path / "reference", 15, None, epochs=EPOCHS)
    _budget_run(tmp_path / "run", 5, None, stop_at=23, epochs=EPOCHS)
    resumed, _, lrs_resumed = _budget_run(tmp_path / "run", 15, None, resume=True, epochs=EPOCHS)
    assert lrs_resumed[0][0] == (2, 15) and lrs_resumed == lrs_reference[-len(lrs_resumed):]
    assert (resumed.step, resumed.epoch_position) == (reference.step, reference.epoch_position) == (9, 3.0)


def test_sphereface_annealing_is_re_expressed_with_the_steps(tmp_path):
    """SphereFace counts optimizer steps: resumed with another batch, its count is re-expressed with the step
    counter, so lambda is a run's with the new batch from the start at the same place in the data."""
    options = {"images": BUDGET_IMAGES, "epochs": EPOCHS, "loss": "sphereface", "m": 4}
    first = make_trainer(tmp_path / "run", global_batch=5, **options)  # sharded: the head wraps a SphereFace
    first.s.total_steps = 23  # epoch 2 + 15 images
    first.fit()
    resumed = make_trainer(tmp_path / "run", global_batch=15, **options)
    resumed.load_state_dict(load_newest_valid(tmp_path / "run" / "checkpoints")[1])
    reference = make_trainer(tmp_path / "reference", global_batch=15, **options)
    reference.s.total_steps = 7
    reference.fit()
    assert (resumed.step, resumed.epoch, resumed.batch) == (reference.step, reference.epoch, reference.batch)
    head, expected = resumed.model.head.inner, reference.model.head.inner
    assert head.iteration.item() == expected.iteration.item() == 7
    assert head.annealing().item() == expected.annealing().item() > head.annealing(torch.tensor(23)).item()


def test_the_resume_warning_counts_one_process_in_the_singular(tmp_path, caplog):
    """The warning of a resume with another batch names the processes that wrote the checkpoint: one is
    'process' (it read '1 processes')."""
    make_trainer(tmp_path / "run", images=BUDGET_IMAGES, global_batch=5, max_steps=4).fit()
    trainer = make_trainer(tmp_path / "run", images=BUDGET_IMAGES, global_batch=10, max_steps=4)
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        trainer.load_state_dict(load_newest_valid(tmp_path / "run" / "checkpoints")[1])
    assert "the checkpoint was written by 1 process with a global batch of 5, this run has 1 and 10" in caplog.text
