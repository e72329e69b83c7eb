"""Every shipped config composes against its schema and builds its object."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from facetrain.backbones import build_backbone
from facetrain.config.checks import check_config
from facetrain.distill.losses import build_distill_loss
from facetrain.errors import ConfigError
from facetrain.config import register_schemas
from facetrain.data import build_train_data
from facetrain.data.images import encode_jpeg
from facetrain.data.recordio import write_insightface_folder
from facetrain.engine.optim import build_optimizer, build_scheduler
from facetrain.runs.run_dir import register_resolvers
from facetrain.heads import build_head
from facetrain.train import hparams
from tests.data_helpers import face

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_schemas()
register_resolvers()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("name", options("backbone"))
def test_backbone_configs_build(name):
    """Every backbone builds at embedding size 512 (shapes only, on the meta device) and 128 (a real forward)."""
    cfg = composed(f"backbone={name}")
    assert cfg.backbone.name == name
    with torch.device("meta"):
        model = build_backbone(name, 512, **hparams(cfg.backbone)).eval()
        assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 512)
    model = build_backbone(name, 128, **hparams(cfg.backbone)).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 128)


@pytest.mark.parametrize("name", options("distill"))
def test_distill_configs_build(name):
    """Every distillation loss builds from its file's keys (the model adds ``distill.weight`` x it); none adds nothing."""
    cfg = composed(f"distill={name}", "distill.teacher=teacher.pt")
    keys = hparams(cfg.distill)
    teacher, weight = keys.pop("teacher"), keys.pop("weight")
    if name == "none":
        assert (cfg.distill.name, weight) == ("none", 0.0)
        return
    assert cfg.distill.name == name and teacher == "teacher.pt" and weight > 0
    loss = build_distill_loss(name, 16, 32, **keys)
    student, logits = torch.randn(8, 16, requires_grad=True), torch.randn(8, 10, requires_grad=True)
    value = loss(student, torch.randn(8, 32), torch.arange(8) % 4, logits, torch.randn(8, 10))
    value.backward()
    grad = logits.grad if loss.needs_teacher_logits else student.grad
    assert value.dim() == 0 and torch.isfinite(value) and grad.abs().sum() > 0


def test_distillation_without_a_teacher_is_one_line():
    with pytest.raises(ConfigError, match="distill=feature needs a teacher, but distill.teacher is not set"):
        check_config(composed("distill=feature"))


@pytest.mark.parametrize("name", options("loss"))
def test_loss_configs_build(name):
    cfg = composed(f"loss={name}")
    head = build_head(name, 16, 10, **hparams(cfg.loss))
    out = head(torch.randn(4, 16), torch.tensor([0, 1, 2, 3]))
    assert out.logits.shape == (4, 10) and torch.isfinite(out.loss)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_configs_build(optimizer, scheduler):
    cfg = composed(f"optimizer={optimizer}", f"scheduler={scheduler}", "scheduler.warmup_epochs=1")
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(params, optimizer, **hparams(cfg.optimizer))
    sched = build_scheduler(opt, scheduler, total_steps=100, steps_per_epoch=10, **hparams(cfg.scheduler))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(cfg.optimizer.lr)  # linear warm-up over one epoch
    assert lrs[-1] < cfg.optimizer.lr


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_configs_compose(name):
    cfg = composed(f"dataset={name}")
    assert cfg.dataset.name == name and "num_classes" in cfg.dataset


@pytest.mark.parametrize("name", [name for name in options("dataset")
                                  if "/schema/dataset/rec@" in (CONFIGS / "dataset" / f"{name}.yaml").read_text()])
def test_recordio_dataset_configs_build_on_a_recordio_folder(tmp_path, name):
    """Every dataset config whose data the user points at (MS1Mv3, Glint360K, WebFace...) builds its dataset:
    its name is a registered builder, and the builder reads insightface's layout."""
    write_insightface_folder(tmp_path, [(i // 2, encode_jpeg(face(i))) for i in range(6)], num_classes=3)
    cfg = composed(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.num_classes=3")
    data = build_train_data(cfg.dataset.name, **hparams(cfg.dataset))
    assert (len(data.dataset), data.num_classes) == (6, 3)


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_configs_compose(name):
    cfg = composed(f"experiment={name}")
    OmegaConf.to_container(cfg, resolve=True)


def test_poly_matches_arcface_torch():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, "poly", total_steps=100, steps_per_epoch=10, warmup_epochs=2, power=2.0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[10] == pytest.approx(0.05)
    assert lrs[60] == pytest.approx(0.1 * (1 - 40 / 80) ** 2)


def test_train_help_lists_every_backbone_dataset_and_preset():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(CONFIGS.parent / "train.py"), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("== Config ==")[0].splitlines()
    listed = {line.split(":", 1)[0]: line.split(":", 1)[1].replace(",", " ").split() for line in groups if ": " in line}
    for group in ("backbone", "dataset", "experiment", "loss"):
        assert listed[group] == options(group), group


@pytest.mark.parametrize("name", ["r18", "ir_se_50", "vit_t"])
def test_activation_checkpointing_keeps_outputs_gradients_and_batch_norm_statistics(name):
    torch.manual_seed(0)
    plain = build_backbone(name, 32, **({"dropout": 0.0} if name != "vit_t" else {"drop_path_rate": 0.0, "mask_ratio": 0.0}))
    checkpointed = build_backbone(name, 32, activation_checkpointing=True,
                                  **({"dropout": 0.0} if name != "vit_t" else {"drop_path_rate": 0.0, "mask_ratio": 0.0}))
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 112, 112)
    for model in (plain.train(), checkpointed.train()):
        model(x).square().sum().backward()
    for (key, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.equal(a, b), key  # running statistics: the recomputation does not count the batch twice
    for (key, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=key)


@pytest.mark.parametrize("name", ["mbf", "resnet50"])
def test_activation_checkpointing_is_refused_where_it_is_not_offered(name):
    from facetrain.errors import ConfigError

    with pytest.raises(ConfigError, match=f"backbone.activation_checkpointing=true is not offered by {name}"):
        build_backbone(name, 32, activation_checkpointing=True)
