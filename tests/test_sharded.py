"""Model-parallel heads and Partial FC: the sharded head on 2 and 3 gloo ranks equals the whole head on
one process (logits, loss, gradients, state, monitoring diagnostics and stats), checkpoints re-shard across world sizes, and Partial FC
scores and steps only the sampled centres."""
from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from facetrain.engine.optim import build_optimizer
from facetrain.heads import build_head
from facetrain.parallel.collectives import ClassPartition, RowShard
from facetrain.heads.sharded import ShardedHead, per_class_rows, shard_head
from tests.dist_helpers import run_ranks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest

CLASSES, DIM, BATCH, STEPS = 10, 8, 12, 3
CASES = {  # name -> (registered head, hyperparameters, sample_rate)
    "softmax": ("softmax", {"bias": True}, 1.0),
    "cosface": ("cosface", {}, 1.0),
    "arcface": ("arcface", {}, 1.0),
    "x2softmax": ("x2softmax", {}, 1.0),
    "sphereface": ("sphereface", {}, 1.0),
    "subcenter_arcface": ("subcenter_arcface", {}, 1.0),
    "curricularface": ("curricularface", {}, 1.0),  # stateful: t
    "adaface": ("adaface", {}, 1.0),  # stateful: norm statistics
    "magface": ("magface", {}, 1.0),  # extra per-sample term
    "center+arcface": ("center", {"base": "arcface", "lambda_c": 0.1}, 1.0),  # extra term and per-class state
    "partial_fc_all_positive": ("arcface", {}, 0.5),  # Partial FC whose batch holds every class: samples all
}


def builder(case: str):
    name, hparams, _ = CASES[case]
    return lambda num_classes: build_head(name, DIM, num_classes, **hparams)


def whole_head(case: str):
    """The case's head over all classes with unit-scale centres (and a non-zero bias), in training mode."""
    torch.manual_seed(0)
    head = builder(case)(CLASSES).train()
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return head


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of ``BATCH`` embeddings whose labels cover every class."""
    generator = torch.Generator().manual_seed(100 + step)
    labels = torch.cat([torch.arange(CLASSES), torch.randint(0, CLASSES, (BATCH - CLASSES,), generator=generator)])
    return torch.randn(BATCH, DIM, generator=generator) * 4, labels[torch.randperm(BATCH, generator=generator)]


def dense(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_dense() if grad.is_sparse else grad


def step(head, embeddings: torch.Tensor, labels: torch.Tensor) -> dict:
    """One training forward and backward; what the comparison needs."""
    embeddings = embeddings.clone().requires_grad_(True)
    output = head(embeddings, labels)
    output.loss.backward()
    result = {"logits": output.logits.detach(), "loss": output.loss.detach(), "embeddings_grad": embeddings.grad,
              "weight_grad": dense(head.weight.grad), "diagnostics": output.diagnostics,
              "stats": {name: value.clone() for name, value in head.stats().items()}}
    head.zero_grad(set_to_none=True)
    return result


def _sharded_worker(rank: int, world_size: int, out, state_in) -> None:
    """Every case sharded over the ranks: start from the whole head (or a saved whole state), run the
    remaining steps on this rank's slice of each batch, save per-rank results and the gathered state."""
    results, states = {}, {}
    share = BATCH // world_size
    for case in CASES:
        head = shard_head(whole_head(case), builder(case), CASES[case][2]).train()
        first = 0
        if state_in is not None:
            head.load_full_state_dict(torch.load(state_in)[case])
            first = 2
        results[case] = []
        for index in range(first, STEPS if state_in is not None else 2):
            embeddings, labels = batch(index)
            rows = slice(rank * share, (rank + 1) * share)
            results[case].append(step(head, embeddings[rows], labels[rows]))
        states[case] = head.full_state_dict()
        results[case].append({"start": head.start, "count": head.count})
    torch.save(results, out / f"rank{rank}.pt")
    if rank == 0:
        torch.save(states, out / "state.pt")


@pytest.fixture(scope="module")
def reference() -> dict:
    """Each case on one process: per-step results and the head's state after 2 steps."""
    results, states = {}, {}
    for case in CASES:
        head = whole_head(case)
        results[case] = []
        for index in range(STEPS):
            if index == 2:
                states[case] = {key: value.clone() for key, value in head.state_dict().items()}
            results[case].append(step(head, *batch(index)))
    return {"results": results, "states": states}


def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


def check_against_reference(out, world_size: int, reference: dict, steps: range) -> None:
    share = BATCH // world_size
    for rank in range(world_size):
        results = torch.load(out / f"rank{rank}.pt")
        for case in CASES:
            *per_step, where = results[case]
            columns = slice(where["start"], where["start"] + where["count"])
            rows_per_class = per_class_rows(builder(case))["weight" if case != "center+arcface" else "base.weight"]
            centre_rows = slice(where["start"] * rows_per_class, (where["start"] + where["count"]) * rows_per_class)
            for got, index in zip(per_step, steps):
                want = reference["results"][case][index]
                what = f"{case}, {world_size} ranks, rank {rank}, step {index}"
                close(got["logits"], want["logits"][:, columns], f"{what}: logits")
                close(got["loss"], want["loss"], f"{what}: loss")
                close(got["embeddings_grad"], want["embeddings_grad"][rank * share:(rank + 1) * share],
                      f"{what}: embedding gradient")
                close(got["weight_grad"], want["weight_grad"][centre_rows], f"{what}: centre gradient")
                assert got["diagnostics"].keys() == want["diagnostics"].keys() == {"target_logit", "target_angle", "embedding_norm"}
                for name, values in want["diagnostics"].items():  # of the global batch, on every rank
                    close(got["diagnostics"][name], values, f"{what}: diagnostic {name}")
                assert got["stats"].keys() == want["stats"].keys()
                for name, value in want["stats"].items():
                    close(got["stats"][name], value, f"{what}: head stat {name}")


def test_sharded_heads_equal_the_whole_head_and_resume_from_2_ranks_onto_3(tmp_path, reference):
    two, three = tmp_path / "two", tmp_path / "three"
    two.mkdir()
    three.mkdir()
    run_ranks(tmp_path, 2, _sharded_worker, two, None)
    check_against_reference(two, 2, reference, range(2))
    gathered = torch.load(two / "state.pt")  # the whole state after 2 steps, gathered from 2 ranks
    for case in CASES:
        assert gathered[case].keys() == reference["states"][case].keys()
        for key, value in reference["states"][case].items():
            close(gathered[case][key], value, f"{case} state {key} gathered from 2 ranks")
    run_ranks(tmp_path, 3, _sharded_worker, three, two / "state.pt")  # 10 classes: 4, 3, 3 per rank
    check_against_reference(three, 3, reference, range(2, STEPS))


def test_per_class_tensors_are_found_from_the_constructor():
    assert per_class_rows(lambda n: build_head("softmax", 4, n, bias=True)) == {"weight": 1, "bias": 1}
    assert per_class_rows(lambda n: build_head("subcenter_arcface", 4, n, k=3)) == {"weight": 3}
    assert per_class_rows(lambda n: build_head("center", 4, n, base="arcface")) == {"centers": 1, "base.weight": 1}
    assert per_class_rows(lambda n: build_head("adaface", 4, n)) == {"weight": 1}  # its statistics are shared


def test_classes_are_split_with_the_remainder_spread():
    partition = ClassPartition(10, 3)
    assert [(partition.start(r), partition.count(r)) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    shard = RowShard(partition, 1, rows_per_class=3)
    assert shard.rows(1) == (12, 9) and torch.equal(shard.slice(torch.arange(30)), torch.arange(12, 21))
    with mock.patch("facetrain.parallel.collectives.world_size", return_value=3):
        with pytest.raises(ValueError, match="cannot split 2 classes over 3 ranks"):
            ShardedHead(lambda n: build_head("arcface", 4, n), 2)


# ---- Partial FC ------------------------------------------------------------------------------------
def partial_fc(sample_rate: float, classes: int = 40):
    torch.manual_seed(0)
    build = lambda n: build_head("cosface", DIM, n, s=16.0)  # noqa: E731
    head = build(classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn_like(head.weight))
    return head, shard_head(head, build, sample_rate).train()


def test_partial_fc_scores_the_positives_and_a_sample_of_negatives():
    whole, sampled = partial_fc(0.25)
    embeddings, labels = torch.randn(6, DIM), torch.tensor([3, 3, 17, 25, 39, 0])
    torch.manual_seed(5)
    output = sampled(embeddings, labels)
    torch.manual_seed(5)
    classes = sampled.sample(labels)
    assert sampled.num_sample == 10 and len(classes) == 10
    assert set(labels.tolist()) <= set(classes.tolist()) and torch.equal(classes, classes.sort().values)
    # the logits are the whole head's columns of the sampled classes, the loss their cross-entropy
    full_logits = whole.eval()(embeddings, labels).logits
    column = torch.searchsorted(classes, labels)
    torch.testing.assert_close(output.logits, full_logits[:, classes])
    torch.testing.assert_close(output.loss, F.cross_entropy(full_logits[:, classes], column))
    output.loss.backward()
    grad = sampled.weight.grad
    assert grad.is_sparse and torch.equal(grad.coalesce().indices()[0], classes)  # no gradient for the others


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_partial_fc_steps_only_sampled_centres_and_leaves_the_others_momentum_alone(optimizer):
    _, head = partial_fc(0.25)
    hparams = ({"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": False} if optimizer == "sgd"
               else {"lr": 0.01, "weight_decay": 0.05, "betas": [0.9, 0.999], "eps": 1e-8})
    opt = build_optimizer(head.parameters(), optimizer, **hparams)
    reference_state: dict[str, torch.Tensor] = {}
    for index in range(3):
        generator = torch.Generator().manual_seed(index)
        embeddings, labels = torch.randn(6, DIM, generator=generator), torch.randint(0, 40, (6,), generator=generator)
        before = head.weight.detach().clone()
        state_before = {k: v.clone() for k, v in opt.state[head.weight].items() if torch.is_tensor(v) and v.dim()}
        head(embeddings, labels).loss.backward()
        rows = head.weight.grad.coalesce().indices()[0]
        unsampled = torch.ones(40, dtype=torch.bool)
        unsampled[rows] = False
        # the reference: an optimizer on just the sampled rows, with their saved state
        sub = torch.nn.Parameter(before[rows].clone())
        sub.grad = head.weight.grad.coalesce().values().clone()
        sub_opt = build_optimizer([sub], optimizer, **hparams)
        if reference_state:
            sub_opt.state[sub] = {k: (v[rows].clone() if torch.is_tensor(v) and v.dim() else v.clone())
                                  for k, v in reference_state.items()}
        sub_opt.step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state = opt.state[head.weight]
        assert torch.equal(head.weight.detach()[unsampled], before[unsampled])  # unsampled rows untouched
        for key, value in state_before.items():
            assert torch.equal(state[key][unsampled], value[unsampled]), f"{key} of unsampled rows changed"
        torch.testing.assert_close(head.weight.detach()[rows], sub.detach(), rtol=0, atol=0)
        for key, value in sub_opt.state[sub].items():
            if torch.is_tensor(value) and value.dim():
                torch.testing.assert_close(state[key][rows], value, rtol=0, atol=0)
        reference_state = {k: v.clone() for k, v in state.items()}
        assert state["momentum_buffer" if optimizer == "sgd" else "exp_avg"].shape == head.weight.shape
