"""Steps with NaN/Inf gradients, forced on the CPU: skipped on every rank, weights and optimizer state
untouched, training going on as if the step had not been; fp16's dynamic loss scale backing off and
growing. Every optimizer (SGD, AdamW; fused and not) x every head layout (whole head, sharded, Partial FC)
on 1, 2 and 3 processes (gloo), as only GPU runs would otherwise take these paths (fp16 overflows)."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from facetrain.engine.step_benchmark import loader_batches
from facetrain.engine.trainer import Trainer
from tests.dist_helpers import run_ranks
from tests.trainer_helpers import make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUTS = {"whole": {"sharded": False}, "sharded": {"sharded": True}, "partial_fc": {"sharded": True, "sample_rate": 0.5}}
CASES = [(optimizer, fused, layout) for optimizer, fused, layout in itertools.product(("sgd", "adamw"), (False, True), LAYOUTS)]
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
STEPS = 6
# step -> where a bad gradient appears: an Inf in the backbone on every rank (DDP makes the backbone's
# gradients equal, so an overflow shows on all), a NaN in the head's centres on the last rank only
BAD = {1: "backbone", 4: "head"}


def poison(trainer: Trainer, bad: dict[int, str], rank: int, world_size: int) -> None:
    """Write a NaN/Inf into a gradient just before the scaler looks at them, at the steps of ``bad``."""
    unscale = trainer.scaler.unscale_

    def poisoned_unscale(optimizer: torch.optim.Optimizer) -> None:
        where = bad.get(trainer.step + 1)
        if where == "backbone":
            next(p for p in trainer.model.backbone.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        elif where == "head" and rank == world_size - 1:
            weight = trainer.model.head.weight
            if weight.grad.is_sparse:  # Partial FC's row-sparse gradient
                weight.grad = weight.grad.coalesce()
                weight.grad._values()[0, 0] = float("nan")
            else:
                weight.grad[0, 0] = float("nan")
        unscale(optimizer)

    trainer.scaler.unscale_ = poisoned_unscale


def snapshot(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[tuple[int, str], torch.Tensor]]:
    """Copies of the parameters and of every tensor of the optimizer's state."""
    params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    state = {}
    for index, p in enumerate(p for group in trainer.optimizer.param_groups for p in group["params"]):
        for key, value in trainer.optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                state[(index, key)] = value.clone()
    return params, state


def assert_untouched(before, after, label: str) -> None:
    """Parameters and optimizer state exactly as before; state created by a skipped step (fused AdamW
    makes its moments before its kernel returns) is a fresh optimizer's: zeros."""
    for name, value in before[0].items():
        assert torch.equal(after[0][name], value), f"{label}: {name} changed in a skipped step"
    for key, value in after[1].items():
        expected = before[1].get(key, torch.zeros_like(value))
        assert torch.equal(value, expected), f"{label}: optimizer state {key} changed in a skipped step"


def train_with_bad_steps(run_dir: Path, rank: int, world_size: int, optimizer: str, fused: bool, layout: str,
                         amp_dtype=None) -> Trainer:
    """``STEPS`` optimizer steps with the ``BAD`` ones poisoned, checking each bad step left the state alone."""
    # no batch norm: a bias in front of one has a gradient of rounding noise, which Adam normalises into
    # steps of size lr whose sign fused and unfused kernels need not share
    trainer = make_trainer(run_dir, world_size, rank, optimizer=optimizer, fused=fused, classes=24, batch_norm=False,
                           amp_dtype=amp_dtype, **LAYOUTS[layout])
    poison(trainer, BAD, rank, world_size)
    trainer.model.train()
    batches = loader_batches(trainer)
    for step in range(1, STEPS + 1):
        before = snapshot(trainer) if step in BAD else None
        trainer.train_step(*next(batches))
        if before is not None:
            assert_untouched(before, snapshot(trainer), f"{optimizer} fused={fused} {layout} step {step} rank {rank}")
    assert trainer.step == STEPS
    return trainer


def _matrix_worker(rank: int, world_size: int, out: Path) -> None:
    for optimizer, fused, layout in CASES:
        trainer = train_with_bad_steps(out, rank, world_size, optimizer, fused, layout)
        _, skipped = trainer.window.read()
        head = trainer.model.head.full_state_dict()  # collective: every rank calls it
        if rank == 0:
            torch.save({"skipped": skipped, "backbone": trainer.model.backbone.state_dict(), "head": head,
                        "scale": trainer.scaler.get_scale()}, out / f"{world_size}_{optimizer}_{fused}_{layout}.pt")
        torch.save(trainer.model.backbone.state_dict(), out / f"{world_size}_{optimizer}_{fused}_{layout}_rank{rank}.pt")


def _load(out: Path, name: str) -> dict:
    return torch.load(out / f"{name}.pt", weights_only=False)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> Path:
    """Every case trained on 1, 2 and 3 processes (gloo), results in files."""
    out = tmp_path_factory.mktemp("skips")
    _matrix_worker(0, 1, out)  # one process, no process group
    for world_size in (2, 3):
        run_ranks(out, world_size, _matrix_worker, out)
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize(("optimizer", "fused", "layout"), CASES)
def test_bad_steps_are_skipped_everywhere_and_training_goes_on(matrix, world_size, optimizer, fused, layout):
    name = f"{world_size}_{optimizer}_{fused}_{layout}"
    result = _load(matrix, name)
    assert result["skipped"] == len(BAD) and result["scale"] == 1.0  # fp32: the scale stays fixed
    weights = {**result["backbone"], **{f"head.{k}": v for k, v in result["head"].items()}}
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    for rank in range(1, world_size):  # replicated weights stayed replicas (every rank skipped the same steps)
        other = _load(matrix, f"{name}_rank{rank}")
        assert all(torch.equal(other[key], value) for key, value in result["backbone"].items())
    # the fused kernels go on exactly as torch's reference implementation, which never calls step() on a
    # skipped step (the fused SGD once kept uninitialised momentum from a skipped first step)
    reference = _load(matrix, f"{world_size}_{optimizer}_False_{layout}")
    for key, value in result["backbone"].items():
        torch.testing.assert_close(value, reference["backbone"][key], rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(result["head"]["weight"], reference["head"]["weight"], rtol=1e-4, atol=1e-5)
    # a whole or sharded head on any number of processes is the same maths (Partial FC samples per rank)
    if layout != "partial_fc":
        single = _load(matrix, f"1_{optimizer}_False_whole")
        torch.testing.assert_close(result["head"]["weight"], single["head"]["weight"], rtol=1e-4, atol=1e-4)


def test_training_moved_the_weights(matrix):
    start = make_trainer(Path("unused"), classes=24, sharded=False, batch_norm=False)
    trained = _load(matrix, "2_sgd_True_sharded")
    assert not torch.allclose(trained["head"]["weight"], start.model.head.weight.detach())


# ---- low precision --------------------------------------------------------------------------------------
def _precision_worker(rank: int, world_size: int, out: Path) -> None:
    for precision, (optimizer, fused, layout) in itertools.product(PRECISIONS, (("sgd", True, "sharded"),
                                                                              ("adamw", True, "partial_fc"))):
        trainer = train_with_bad_steps(out, rank, world_size, optimizer, fused, layout, PRECISIONS[precision])
        _, skipped = trainer.window.read()
        torch.save({"skipped": skipped, "scale": trainer.scaler.get_scale()},
                   out / f"{precision}_{optimizer}_{layout}_rank{rank}.pt")


def test_bf16_and_fp16_autocast_skip_on_every_rank_with_one_scale(tmp_path):
    run_ranks(tmp_path, 2, _precision_worker, tmp_path)
    for precision in PRECISIONS:
        for name in ("sgd_sharded", "adamw_partial_fc"):
            results = [_load(tmp_path, f"{precision}_{name}_rank{rank}") for rank in range(2)]
            assert results[0] == results[1], (precision, name)  # the ranks agree on every skip and on the scale
            assert results[0]["skipped"] >= len(BAD)  # fp16 may also overflow by itself at the start
            if precision == "bf16":
                assert results[0] == {"skipped": len(BAD), "scale": 1.0}


def test_fp16_loss_scale_halves_on_overflow_and_doubles_after_the_growth_interval(tmp_path):
    interval, steps, forced = 3, 24, {18: "backbone"}
    trainer = make_trainer(tmp_path, amp_dtype=torch.float16, growth_interval=interval, sharded=False,
                           fused=True, total_steps=steps)
    poison(trainer, forced, 0, 1)
    trainer.model.train()
    batches = loader_batches(trainer)
    scale, clean, found, history = 2.0**16, 0, [], []
    for step in range(1, steps + 1):
        before = snapshot(trainer)
        trainer.train_step(*next(batches))
        overflow = bool(trainer.scaler.last_found_inf)
        found.append(overflow)
        if overflow:  # torch's rule, which GradScaler("cpu") under CPU fp16 autocast must follow
            assert_untouched(before, snapshot(trainer), f"fp16 step {step}")
            scale, clean = scale / 2, 0
        else:
            clean += 1
            if clean == interval:
                scale, clean = scale * 2, 0
        assert trainer.scaler.get_scale() == scale, f"step {step}"
        history.append(scale)
    assert found[17] and any(found[:17]), "an overflow was forced at step 18; the start overflows by itself"
    assert any(b > a for a, b in zip(history, history[1:])), f"the scale never grew: {history}"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
