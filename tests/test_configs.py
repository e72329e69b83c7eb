"""Every shipped config composes against its schema and builds its object."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from facetrain.backbones import build_backbone
from facetrain.config import register_schemas
from facetrain.engine.optim import build_optimizer, build_scheduler
from facetrain.engine.run_dir import register_resolvers
from facetrain.heads import build_head
from facetrain.train import hparams

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
    cfg = composed(f"backbone={name}")
    assert cfg.backbone.name == name
    if name in ("r100", "r200"):  # building is enough; a forward pass of these is slow on CPU
        model = build_backbone(name, cfg.embedding_size, **hparams(cfg.backbone))
        assert model.output.fc.out_features == 512
        return
    model = build_backbone(name, 64, **hparams(cfg.backbone)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 64)


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
