"""Distillation in the training loop: the teacher is frozen, runs on every rank under the student's autocast, stays
out of the checkpoint's model state (its file and sha256 are in it), a resumed run is bit-identical to an
uninterrupted one, and a 2-process DDP run reproduces one process. Tiny models on 6x6 images (tests/trainer_helpers)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from facetrain.distill.losses import build_distill_loss
from facetrain.distill.teachers import NetworkTeacher
from facetrain.distill.term import Distillation
from facetrain.engine.model import FaceModel
from facetrain.errors import ResumeError
from facetrain.files import file_sha256
from facetrain.heads import build_head
from facetrain.runs.checkpoint import load_newest_valid
from tests.dist_helpers import run_ranks
from tests.test_resilience import scalars
from tests.trainer_helpers import assert_final_weights_close, final_weights, make_trainer, next_tensorboard_second

TEACHER_SIZE = 5


def teacher_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(), nn.Linear(64, TEACHER_SIZE))


def distillation(directory: Path, name: str = "mse", seed: int = 1, **keys) -> dict[str, nn.Module]:
    """A teacher of its own (``seed``) saved in ``directory`` (for its sha256) and the term ``name`` (weight 0.5);
    the projection 8 -> 5 starts from the same draw every time."""
    net = teacher_net(seed)
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / f"teacher_{seed}.pt"
    torch.save(net.state_dict(), file)
    torch.manual_seed(2)
    keys = keys or ({"alpha": 8.0} if name == "mse" else {})
    return {"distill": Distillation(name, NetworkTeacher(file, net, TEACHER_SIZE), build_distill_loss(name, 8, TEACHER_SIZE, **keys), 0.5)}


def tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def test_the_model_adds_weight_times_the_term_and_reports_the_term(tmp_path):
    terms = distillation(tmp_path)
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(108, 8))
    head = build_head("cosface", 8, 4, s=16.0, m=0.2)
    images, labels = torch.randn(6, 3, 6, 6), torch.arange(6) % 4
    plain = FaceModel(backbone, head)(images, labels)
    output = FaceModel(backbone, head, terms)(images, labels)
    term = terms["distill"]
    expected = term.loss(backbone(images), term.teacher(images, labels, None).embeddings, labels, plain.logits)
    assert output.diagnostics["distill_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert output.loss.item() == pytest.approx(plain.loss.item() + 0.5 * expected.item(), rel=1e-6)
    assert expected.item() > 0


def test_the_teacher_is_frozen_and_never_in_the_checkpoints_model_state(tmp_path):
    terms = distillation(tmp_path / "teacher")
    teacher = terms["distill"].teacher
    before = {k: v.clone() for k, v in teacher.backbone.state_dict().items()}
    trainer = make_trainer(tmp_path / "run", total_steps=3, checkpoint_every=3, terms=terms)
    trainer.fit()
    assert not teacher.backbone.training and not any(p.requires_grad for p in teacher.backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.backbone.state_dict().items())  # BN statistics too
    assert not any("teacher" in name for name in trainer.model.state_dict())
    assert all(p is not q for p in teacher.backbone.parameters() for q in trainer.optimizer.param_groups[0]["params"])
    state = load_newest_valid(tmp_path / "run" / "checkpoints")[1]
    assert set(state["terms"]) == {"distill._extra_state", "distill.loss.projection.weight"}  # the projection trains
    assert state["terms"]["distill._extra_state"] == {"loss": "mse", "teacher": str(teacher.file),
                                                      "sha256": file_sha256(teacher.file)}
    saved = [v for part in ("backbone", "head") for v in state[part].values()]
    assert not any(v.shape == w.shape and torch.equal(v, w) for v in saved for w in before.values())
    assert not torch.equal(state["terms"]["distill.loss.projection.weight"], distillation(tmp_path / "t2")["distill"].loss.projection.weight)


def test_resume_with_a_teacher_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path / "straight", total_steps=6, terms=distillation(tmp_path / "teacher"))
    straight.fit()  # 4 steps per epoch: the split falls mid-epoch
    make_trainer(tmp_path / "split", total_steps=3, checkpoint_every=3, terms=distillation(tmp_path / "teacher")).fit()
    next_tensorboard_second()
    second = make_trainer(tmp_path / "split", total_steps=6, terms=distillation(tmp_path / "teacher"))
    second.load_state_dict(load_newest_valid(tmp_path / "split" / "checkpoints")[1])
    second.fit()
    a, b = tensors(straight.model.state_dict()), tensors(second.model.state_dict())
    assert a.keys() == b.keys() and "terms.distill.loss.projection.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    curve = scalars(tmp_path / "straight", "train/distill_loss")
    assert len(curve) == 6 and scalars(tmp_path / "split", "train/distill_loss") == curve
    assert scalars(tmp_path / "split", "train/loss") == scalars(tmp_path / "straight", "train/loss")


def test_resume_with_another_teacher_file_or_loss_is_refused_in_one_line(tmp_path):
    make_trainer(tmp_path / "run", total_steps=3, checkpoint_every=3, terms=distillation(tmp_path / "teacher")).fit()
    state = load_newest_valid(tmp_path / "run" / "checkpoints")[1]
    other = make_trainer(tmp_path / "run", total_steps=6, terms=distillation(tmp_path / "teacher", seed=7))
    with pytest.raises(ResumeError, match=r"distilled from .*teacher_1\.pt .* but distill\.teacher=.*teacher_7\.pt is "
                                          r"another file.*resume with the teacher the run started with"):
        other.load_state_dict(state)
    feature = make_trainer(tmp_path / "run", total_steps=6, terms=distillation(tmp_path / "teacher", name="feature"))
    with pytest.raises(ResumeError, match="distilled with distill=mse, not distill=feature"):
        feature.load_state_dict(state)


def test_bf16_autocast_runs_the_teacher_under_the_students_autocast(tmp_path):
    terms = distillation(tmp_path / "teacher")
    dtypes = []
    terms["distill"].teacher.backbone.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    metrics = make_trainer(tmp_path / "run", total_steps=3, amp_dtype=torch.bfloat16, terms=terms).fit()
    assert dtypes == [torch.bfloat16] * 3
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert all(torch.isfinite(torch.tensor(v)) and v > 0 for _, v in scalars(tmp_path / "run", "train/distill_loss"))


def _train_worker(rank: int, world_size: int, run_dir: Path, options: dict) -> None:
    make_trainer(run_dir, world_size, rank, terms=distillation(run_dir.parent / "teacher"), **options).fit()


def test_ddp_with_a_teacher_on_every_rank_reproduces_one_process(tmp_path):
    """Each rank runs its own teacher on its half; the term (and its projection's gradient) averages over ranks
    beside a data-parallel head and beside a head split over the ranks (whose gradients DDP sums)."""
    one = make_trainer(tmp_path / "one", sharded=False, terms=distillation(tmp_path / "teacher"))
    one.fit()
    expected = final_weights(tmp_path / "one")
    projection = one.model.terms["distill"].loss.projection.weight.detach()
    for name, options in (("sharded", {}), ("data_parallel_head", {"sharded": False})):
        run_ranks(tmp_path, 2, _train_worker, tmp_path / name, options)
        assert_final_weights_close(tmp_path / name, expected, name)
        state = load_newest_valid(tmp_path / name / "checkpoints")[1]
        torch.testing.assert_close(state["terms"]["distill.loss.projection.weight"], projection, rtol=1e-4, atol=1e-4)
    # beside the split head, the logged term is the global batch's, as that head's loss is
    assert [v for _, v in scalars(tmp_path / "sharded", "train/distill_loss")] == pytest.approx(
        [v for _, v in scalars(tmp_path / "one", "train/distill_loss")], abs=1e-4)
