"""Starting from trained weights: init.backbone (any file the importer reads), init.head=class_mean on one
process and on sharded gloo ranks, frozen parts, per-part learning rates, frozen batch norm, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facetrain.data.transforms import normalize
from facetrain.parallel.groups import DistInfo
from facetrain.engine.finetune import class_mean_centres, freeze_batch_norm, init_head_from_class_means
from facetrain.engine.step_benchmark import loader_batches
from facetrain.heads import build_head
from facetrain.heads.sharded import shard_head
from tests.conftest import SMOKE
from tests.dist_helpers import run_ranks
from tests.trainer_helpers import CLASSES, Faces, backbone, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def expected_centres(network: torch.nn.Module, dataset: Faces) -> torch.Tensor:
    """The normalised mean of each class's normalised embeddings, computed here image by image."""
    network.eval()
    with torch.no_grad():
        embeddings = [F.normalize(network(normalize(dataset[i][0].unsqueeze(0))))[0] for i in range(len(dataset))]
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    return F.normalize(torch.stack([torch.stack(embeddings)[labels == c].mean(0) for c in range(dataset.classes)]))


def test_class_mean_centres_on_one_process():
    torch.manual_seed(0)
    network, dataset = backbone(batch_norm=True), Faces()
    expected = expected_centres(network, dataset)
    network.train()
    centres, counts = class_mean_centres(network, dataset, CLASSES, DistInfo(), torch.device("cpu"), 5, 0)
    torch.testing.assert_close(centres, expected)
    assert counts.tolist() == [8.0] * CLASSES and network.training  # mode restored
    head = build_head("subcenter_arcface", 8, CLASSES, k=3)
    init_head_from_class_means(head, network, dataset, DistInfo(), torch.device("cpu"), 5, 0)
    torch.testing.assert_close(F.normalize(head.subcenters, dim=2), expected.unsqueeze(1).expand(-1, 3, -1))


def _sharded_worker(rank: int, world_size: int, out: Path) -> None:
    torch.manual_seed(0)
    network, dataset = backbone(batch_norm=True), Faces()
    build = lambda n: build_head("arcface", 8, n)  # noqa: E731
    head = shard_head(build(CLASSES), build, sample_rate=0.5)  # Partial FC: the centres are the shard's all the same
    init_head_from_class_means(head, network, dataset, DistInfo(rank, rank, world_size), torch.device("cpu"), 4, 0)
    full = head.full_state_dict()
    if rank == 0:
        torch.save(full["weight"], out / "weight.pt")


def test_class_mean_centres_of_a_sharded_head_over_three_ranks(tmp_path):
    run_ranks(tmp_path, 3, _sharded_worker, tmp_path)  # 6 classes: 2 per rank; each rank embeds a third of the images
    torch.manual_seed(0)
    expected = expected_centres(backbone(batch_norm=True), Faces())
    torch.testing.assert_close(F.normalize(torch.load(tmp_path / "weight.pt")), expected)


def test_frozen_backbone_for_the_first_steps_then_training(tmp_path):
    trainer = make_trainer(tmp_path, total_steps=6, batch_norm=False, sharded=False)
    trainer.s.frozen, trainer.s.frozen_steps = ("backbone",), 3
    trainer.frozen = list(trainer.model.backbone.parameters())
    trainer.model.train()
    batches = loader_batches(trainer)
    start = [p.detach().clone() for p in trainer.model.backbone.parameters()]
    head = trainer.model.head.weight.detach().clone()
    for _ in range(3):
        trainer.train_step(*next(batches))
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.backbone.parameters(), start))
    assert not torch.equal(trainer.model.head.weight, head)
    assert not any(trainer.optimizer.state.get(p) for p in trainer.model.backbone.parameters())  # no momentum either
    trainer.train_step(*next(batches))
    assert not all(torch.equal(p, q) for p, q in zip(trainer.model.backbone.parameters(), start))


def test_frozen_batch_norm_keeps_and_uses_its_statistics():
    torch.manual_seed(0)
    network = backbone(batch_norm=True)
    stats = {k: v.clone() for k, v in network.state_dict().items() if "running" in k}
    assert freeze_batch_norm(network) == 2
    network.train()
    x = torch.randn(4, 3, 6, 6)
    out = network(x)
    assert all(torch.equal(network.state_dict()[k], v) for k, v in stats.items())
    network.eval()
    torch.testing.assert_close(out, network(x))  # train mode normalises as eval mode does


# ---- the command line ------------------------------------------------------------------------------------
SHORT = [*SMOKE, "trainer.max_steps=3", "eval.at_start=true", "checkpoint.every_steps=3"]


def test_a_run_starts_from_another_run_s_backbone_with_a_class_mean_head(train_in_process, tmp_path):
    pretrained = train_in_process(*SHORT, "name=pretrain")
    accuracy = json.loads((pretrained / "metrics.json").read_text())["val"]["synthetic_val"]["accuracy"]
    finetuned = train_in_process(*SHORT, "name=finetuned", f"init.backbone={pretrained}", "init.head=class_mean",
                                 "loss=cosface", "finetune.backbone_lr_scale=0.1", "finetune.frozen=[backbone.body.0]",
                                 "finetune.freeze_batch_norm=true")
    log = (finetuned / "train.log").read_text()
    assert "init.backbone: a facetrain mbf from" in log and "20 class centres set to their images' mean embedding" in log
    assert f"step 0 val synthetic_val: accuracy {accuracy:.4f}" in log  # the same backbone, evaluated before training
    assert "batch norm layers keep their statistics" in log


def test_init_with_resume_and_a_wrong_prefix_are_refused(run_cli, tmp_path):
    result = run_cli(*SMOKE, "resume=auto", f"init.backbone={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "facetrain: error: init.backbone starts a new run from weights, but resume=auto continues a run; "
        "drop resume to start from the weights, or drop init.* to continue the run")
    result = run_cli(*SMOKE, "finetune.frozen=[bakbone]")
    assert result.returncode == 2
    assert "finetune.frozen names 'bakbone', which is no parameter (or module) of the model" in result.stderr


def test_the_finetune_preset_composes_and_trains(train_in_process, tmp_path):
    base = train_in_process(*SHORT, "name=base")
    finetuned = train_in_process("experiment=finetune", f"init.backbone={base}", "dataset=synthetic",
                                 "dataset.num_classes=10", "dataset.images_per_class=5", "dataset.val_pairs=20",
                                 "trainer.max_epochs=2", "trainer.batch_size=10", "trainer.num_workers=0",
                                 "trainer.progress_bar=false")
    assert json.loads((finetuned / "metrics.json").read_text())["step"] == 10  # 2 epochs of 50 images in tens
    assert "init.backbone: a facetrain mbf from" in (finetuned / "train.log").read_text()
