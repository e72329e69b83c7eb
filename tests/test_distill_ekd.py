"""EKD (facetrain.distill.ekd) equals TFace's ``recognition/tasks/ekd/distillation/ekd.py`` at commit
171ec1434aca0972e111663ac646c9c1e3e44b5b: run side by side outside the repository on the inputs generated below
(float64), the losses were equal and the gradients within 1.4e-17 over 3 steps of 3 cases; in float32 over
200 steps of 128 samples, losses within 1.5e-8 and gradients within 1.3e-9. The values printed by TFace's code
are pinned here; the anchors, rank counts and degenerate batches by facts worked out by hand."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from facetrain.distill.ekd import EvaluationOrientedLoss, rank_counts
from facetrain.distill.losses import DistillBatch, build_distill_loss
from tests.dist_helpers import run_ranks


def inputs(n: int, classes: int, student_size: int, teacher_size: int, generator: torch.Generator):
    """Labels, student and teacher embeddings (the teacher a noisy copy of the student) as the side-by-side made them."""
    labels = torch.randint(classes, (n,), generator=generator)
    student = torch.randn(n, student_size, generator=generator, dtype=torch.float64)
    teacher = (student[:, :min(student_size, teacher_size)].repeat(1, 2)[:, :teacher_size]
               + 0.5 * torch.randn(n, teacher_size, generator=generator, dtype=torch.float64))
    return labels, student, teacher


def term(loss: EvaluationOrientedLoss, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return loss.term(DistillBatch(student, teacher, labels, torch.zeros(len(labels), 1)))


# TFace's figures: per step (loss, student anchors after the step, the gradient of row 0's first three coordinates)
TFACE = {
    "64x32->48": (dict(n=64, classes=16, student_size=32, teacher_size=48, seed=0, top_k=2000), [
        (0.18477310976195555, [0.0022625475403051406, 0.003976330514913172, 0.004804617493653382, 0.004852593349448678],
         [0.00014897934088966373, 0.00013046142075092662, -0.0003526658298931957]),
        (0.15417792980414827, [0.004662814046023262, 0.00791111048299966, 0.010247353658141075, 0.011155665416332984],
         [-0.010216762734040881, -0.0013060859920726903, 0.00038804029126386175]),
        (0.17216524412181633, [0.0068421248012143394, 0.011801918952914407, 0.01547682330284231, 0.01667964297238108],
         [0.00012830381128870746, 0.00037057685407989823, 9.585761951782991e-05])]),
    "96x16, top 50": (dict(n=96, classes=24, student_size=16, teacher_size=16, seed=1, top_k=50), [
        (0.09772988034679415, [0.0033512962400320777, 0.005568702639482042, 0.006736748424249138, 0.00847884057600881],
         None),
        (0.12632159952549576, [0.006598578560784031, 0.011130802682034126, 0.013516437555019434, 0.01570743887298817],
         [-0.003847026519242232, -0.001045461067358887, 0.0014314833221278158]),
        (0.12634569053769917, [0.00983585140961256, 0.01661182016830242, 0.020331119921694816, 0.023773498614432093],
         None)]),
}


@pytest.mark.parametrize("case", list(TFACE))
def test_loss_anchors_and_gradient_equal_tfaces_recorded_values(case):
    settings, steps = TFACE[case]
    generator = torch.Generator().manual_seed(settings["seed"])
    loss = EvaluationOrientedLoss(settings["student_size"], settings["teacher_size"], top_k=settings["top_k"]).double()
    for value, anchors, grad_row0 in steps:
        labels, student, teacher = inputs(settings["n"], settings["classes"], settings["student_size"],
                                          settings["teacher_size"], generator)
        student.requires_grad_()
        result = term(loss, student, teacher, labels)
        result.backward()
        assert result.item() == pytest.approx(value, abs=1e-12)
        # FPR 1e-4 .. 1e-6 index the first (hardest) negative of a batch of fewer than 10^4 negative pairs
        torch.testing.assert_close(loss.student_anchors[:4], torch.tensor(anchors, dtype=torch.float64), rtol=0, atol=1e-12)
        assert loss.student_anchors[3] == loss.student_anchors[4] == loss.student_anchors[5]
        if grad_row0 is not None:
            torch.testing.assert_close(student.grad[0, :3], torch.tensor(grad_row0, dtype=torch.float64), rtol=0, atol=1e-12)


def test_anchors_are_the_ema_of_the_negatives_at_each_false_positive_rate():
    """4 negatives sorted descending: FPR 1/2 -> the 4 // 2 = 2nd (from 0), FPR 1/4 -> the 1st; EMA from 0."""
    loss = EvaluationOrientedLoss(2, 2, fprs=(0.5, 0.25), momentum=0.25)  # 4 negatives: indices 4 // 2 = 2, 4 // 4 = 1
    labels = torch.tensor([0, 0, 1, 1])
    angles = torch.tensor([0.0, 0.3, 1.2, 2.0])
    student = torch.stack([angles.cos(), angles.sin()], 1)
    teacher = torch.stack([(angles / 2).cos(), (angles / 2).sin()], 1)
    pairs = ((0, 2), (0, 3), (1, 2), (1, 3))
    student_neg = sorted((math.cos(angles[j] - angles[i]) for i, j in pairs), reverse=True)
    teacher_neg = sorted((math.cos((angles[j] - angles[i]) / 2) for i, j in pairs), reverse=True)
    term(loss, student, teacher, labels)
    expected = [0.25 * student_neg[2], 0.25 * student_neg[1]]
    torch.testing.assert_close(loss.student_anchors, torch.tensor(expected), rtol=0, atol=1e-7)
    torch.testing.assert_close(loss.teacher_anchors, torch.tensor([0.25 * teacher_neg[2], 0.25 * teacher_neg[1]]),
                               rtol=0, atol=1e-7)
    term(loss, student, teacher, labels)  # the same batch again: a + 0.25 (x - a)
    torch.testing.assert_close(loss.student_anchors, torch.tensor(expected) * (1 + 0.75), rtol=0, atol=1e-7)


def test_a_false_positive_rate_of_one_anchors_at_the_least_similar_negative():
    """TFace's rates end at 1e-1; at FPR 1 the index len // 1 would be past the end: the last negative instead."""
    loss = EvaluationOrientedLoss(2, 2, fprs=(1.0,), momentum=1.0)
    angles = torch.tensor([0.0, 0.3, 1.2, 2.0])
    student = torch.stack([angles.cos(), angles.sin()], 1)
    term(loss, student, student, torch.tensor([0, 0, 1, 1]))
    assert loss.student_anchors.item() == pytest.approx(math.cos(2.0 - 0.0), abs=1e-6)


def test_rank_count_is_the_sum_of_tempered_sigmoids_clamped():
    anchors = torch.tensor([0.2, 0.5])
    counts = rank_counts(torch.tensor([0.2, 0.51, 5.0, -5.0]), anchors, 0.01)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = [0.5 + sig(-30.0), sig(31.0) + sig(1.0), 2 * sig(50.0), 2 * sig(-50.0)]  # +-490: clamped at 50
    torch.testing.assert_close(counts, torch.tensor(expected), rtol=1e-6, atol=1e-30)


def test_degenerate_batches_give_finite_losses():
    """No positive pair (TFace: NaN) adds 0; no negative pair (TFace: an index error) leaves the anchors."""
    loss = EvaluationOrientedLoss(8, 8)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    only_negatives = term(loss, x, x + 0.1, torch.arange(6))
    assert torch.isfinite(only_negatives) and loss.student_anchors.abs().sum() > 0
    before = loss.student_anchors.clone()
    student = x.clone().requires_grad_()
    only_positives = term(loss, student, x + 0.1, torch.zeros(6, dtype=torch.long))
    only_positives.backward()
    assert torch.isfinite(only_positives) and torch.equal(loss.student_anchors, before)
    assert torch.isfinite(student.grad).all()


def test_anchors_live_in_the_state_dict_so_a_resume_continues_exactly():
    generator = torch.Generator().manual_seed(3)
    batches = [inputs(32, 8, 16, 16, generator) for _ in range(3)]
    straight = EvaluationOrientedLoss(16, 16)
    for labels, student, teacher in batches[:2]:
        term(straight, student.float(), teacher.float(), labels)
    state = straight.state_dict()
    assert set(state) == {"student_anchors", "teacher_anchors"}
    resumed = EvaluationOrientedLoss(16, 16)
    resumed.load_state_dict(state)
    labels, student, teacher = batches[2]
    assert torch.equal(term(resumed, student.float(), teacher.float(), labels),
                       term(straight, student.float(), teacher.float(), labels))
    assert torch.equal(resumed.student_anchors, straight.student_anchors)


def test_registered_as_ekd_with_tfaces_defaults_and_no_projection():
    loss = build_distill_loss("ekd", 128, 512)
    assert isinstance(loss, EvaluationOrientedLoss) and loss.projection is None
    assert (loss.per_false_positive, loss.momentum, loss.temperature, loss.top_k) == (
        [10, 100, 1000, 10000, 100000, 1000000], 0.01, 0.01, 2000)
    assert (loss.positive_weight, loss.negative_weight) == (0.02, 0.01)


def _two_rank_worker(rank: int, world_size: int, out: Path) -> None:
    generator = torch.Generator().manual_seed(7)
    losses = EvaluationOrientedLoss(16, 24, top_k=300)
    for step in range(2):
        labels, student, teacher = inputs(40, 10, 16, 24, generator)  # the global batch; this rank takes its half
        rows = slice(rank * 20, (rank + 1) * 20)
        local = student[rows].float().requires_grad_()
        value = losses(local, teacher[rows].float(), labels[rows], torch.zeros(20, 1))
        value.backward()
        torch.save({"loss": value.detach(), "grad": local.grad, "anchors": losses.student_anchors.clone(),
                    "teacher_anchors": losses.teacher_anchors.clone()}, out / f"rank{rank}_step{step}.pt")


def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    """Each rank's loss is the global batch's; each rank's rows get world size x their gradient on one process
    (gather_with_grad sums the ranks' identical backward passes), which DDP's average over ranks turns into the
    one-process gradient of the backbone."""
    run_ranks(tmp_path, 2, _two_rank_worker, tmp_path)
    generator = torch.Generator().manual_seed(7)
    single = EvaluationOrientedLoss(16, 24, top_k=300)
    for step in range(2):
        labels, student, teacher = inputs(40, 10, 16, 24, generator)
        whole = student.float().requires_grad_()
        value = single(whole, teacher.float(), labels, torch.zeros(40, 1))
        value.backward()
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}_step{step}.pt")
            torch.testing.assert_close(got["loss"], value.detach(), rtol=1e-6, atol=0)
            torch.testing.assert_close(got["anchors"], single.student_anchors, rtol=0, atol=0)
            torch.testing.assert_close(got["teacher_anchors"], single.teacher_anchors, rtol=0, atol=0)
            torch.testing.assert_close(got["grad"], 2 * whole.grad[rank * 20:(rank + 1) * 20], rtol=1e-5, atol=1e-9)


# ---- in the training loop (tests/trainer_helpers: 6x6 images, 12 per step, 6 identities) --------------------------
def ekd_term(directory: Path, weight: float = 50.0) -> dict[str, torch.nn.Module]:
    """EKD from a teacher of its own, weighted so that it moves the student as much as the head does."""
    from facetrain.distill.teachers import NetworkTeacher
    from facetrain.distill.term import Distillation
    from tests.test_distill import TEACHER_SIZE, teacher_net

    net = teacher_net(1)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), directory / "teacher.pt")
    teacher = NetworkTeacher(directory / "teacher.pt", net, TEACHER_SIZE)
    return {"distill": Distillation("ekd", teacher, build_distill_loss("ekd", 8, TEACHER_SIZE), weight)}


def test_ekd_training_resumes_bit_identically_with_its_anchors(tmp_path):
    from tests.test_distill import tensors
    from tests.test_resilience import scalars
    from facetrain.runs.checkpoint import load_newest_valid
    from tests.trainer_helpers import make_trainer, next_tensorboard_second

    straight = make_trainer(tmp_path / "straight", total_steps=6, terms=ekd_term(tmp_path / "teacher"))
    straight.fit()  # 4 steps per epoch: the split falls mid-epoch
    make_trainer(tmp_path / "split", total_steps=3, checkpoint_every=3, terms=ekd_term(tmp_path / "teacher")).fit()
    next_tensorboard_second()
    state = load_newest_valid(tmp_path / "split" / "checkpoints")[1]
    assert state["terms"]["distill.loss.student_anchors"].abs().sum() > 0
    second = make_trainer(tmp_path / "split", total_steps=6, terms=ekd_term(tmp_path / "teacher"))
    second.load_state_dict(state)
    second.fit()
    a, b = tensors(straight.model.state_dict()), tensors(second.model.state_dict())
    assert "terms.distill.loss.teacher_anchors" in a and all(torch.equal(a[k], b[k]) for k in a)
    assert scalars(tmp_path / "split", "train/distill_loss") == scalars(tmp_path / "straight", "train/distill_loss")


def _ekd_train_worker(rank: int, world_size: int, run_dir: Path, options: dict) -> None:
    from tests.trainer_helpers import make_trainer

    make_trainer(run_dir, world_size, rank, terms=ekd_term(run_dir.parent / "teacher"), **options).fit()


def test_ekd_training_on_two_ranks_reproduces_one_process(tmp_path):
    """EKD over the global batch beside a data-parallel head (DDP averages) and a head split over the ranks (DDP
    sums): the weights, the anchors and the logged term are those of one process on the whole batch."""
    from tests.test_resilience import scalars
    from facetrain.runs.checkpoint import load_newest_valid
    from tests.trainer_helpers import assert_final_weights_close, final_weights, make_trainer

    one = make_trainer(tmp_path / "one", sharded=False, terms=ekd_term(tmp_path / "teacher"))
    one.fit()
    expected, anchors = final_weights(tmp_path / "one"), one.model.terms["distill"].loss.student_anchors
    alone = make_trainer(tmp_path / "alone", sharded=False)  # without the term the weights differ
    alone.fit()
    assert any(not torch.allclose(v, expected[k], rtol=1e-4, atol=1e-4) for k, v in final_weights(tmp_path / "alone").items())
    for name, options in (("sharded", {}), ("data_parallel_head", {"sharded": False})):
        run_ranks(tmp_path, 2, _ekd_train_worker, tmp_path / name, options)
        assert_final_weights_close(tmp_path / name, expected, name)
        state = load_newest_valid(tmp_path / name / "checkpoints")[1]
        torch.testing.assert_close(state["terms"]["distill.loss.student_anchors"], anchors, rtol=1e-5, atol=1e-6)
        assert [v for _, v in scalars(tmp_path / name, "train/distill_loss")] == pytest.approx(
            [v for _, v in scalars(tmp_path / "one", "train/distill_loss")], abs=1e-5)
