"""Experiment presets: each composes as its paper's recipe and trains two steps; linear lr scaling."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from facetrain.config import register_schemas
from facetrain.engine.optim import build_optimizer, scaled_lr
from facetrain.runs.run_dir import register_resolvers
from facetrain.config.checks import check_config
from facetrain.errors import ConfigError
from facetrain.export import export_onnx
from facetrain.train import run
from tests.eval_helpers import write_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_schemas()
register_resolvers()

# preset -> (backbone, loss, dataset, optimizer, lr, reference global batch, epochs) as its source states them
PRESETS = {
    "ms1mv3_r50_arcface": ("r50", "arcface", "ms1mv3", "sgd", 0.1, 1024, 20),
    "ms1mv3_r100_arcface": ("r100", "arcface", "ms1mv3", "sgd", 0.1, 1024, 20),
    "ms1mv3_mbf_arcface": ("mbf", "arcface", "ms1mv3", "sgd", 0.1, 1024, 40),
    "ms1mv3_r50_cosface": ("r50", "cosface", "ms1mv3", "sgd", 0.1, 1024, 20),
    "ms1mv3_r50_x2softmax": ("r50", "x2softmax", "ms1mv3", "sgd", 0.1, 128, 26),
    "ms1mv3_r50_adaface": ("r50", "adaface", "ms1mv3", "sgd", 0.1, 256, 26),
    "casia_r50_center": ("r50", "center", "casia_webface", "sgd", 0.1, 512, 29),
    "casia_r50_sphereface": ("r50", "sphereface", "casia_webface", "sgd", 0.1, 512, 29),
    # arcface_torch configs/glint360k_r50.py, glint360k_r100.py, wf4m_r100.py, wf42m_pfc02_8gpus_r50_bs4k.py,
    # wf42m_pfc03_40epoch_8gpu_vit_t.py, wf42m_pfc03_40epoch_8gpu_vit_b.py: margin_list (1.0, 0.0, 0.4) is CosFace
    "glint360k_r50": ("r50", "cosface", "glint360k", "sgd", 0.1, 1024, 20),
    "glint360k_r100": ("r100", "cosface", "glint360k", "sgd", 0.1, 1024, 20),
    "wf4m_r100": ("r100", "cosface", "webface4m", "sgd", 0.1, 1024, 20),
    "wf42m_r50": ("r50", "cosface", "webface42m", "sgd", 0.4, 4096, 20),
    "wf42m_vit_t": ("vit_t", "cosface", "webface42m", "adamw", 1e-3, 4096, 40),
    "wf42m_vit_b": ("vit_b", "cosface", "webface42m", "adamw", 1e-3, 24576, 40),
}
# distillation preset -> (the recipe it adds a teacher to, the distillation loss)
DISTILL_PRESETS = {"ms1mv3_mbf_feature_onnx": ("ms1mv3_mbf_arcface", "feature"), "ms1mv3_mbf_ekd": (None, "ekd")}
# Two CPU steps of every preset: the smoke dataset and a narrow MobileFaceNet instead of the real data and
# backbone (the presets' backbones are built in tests/test_configs.py); everything else is the preset's.
TINY = ["dataset=synthetic", "dataset.num_classes=20", "dataset.images_per_class=8", "dataset.val_identities=10",
        "dataset.val_images_per_identity=6", "dataset.val_pairs=100", "backbone=mbf", "backbone.scale=1",
        "backbone.blocks=[1,1,1,1]", "embedding_size=32", "trainer.max_steps=2", "trainer.batch_size=4",
        "trainer.num_workers=0", "trainer.progress_bar=false", "trainer.precision=fp32", "trainer.device=cpu",
        "eval.targets=[]", "eval.at_start=false", "trainer.channels_last=false"]


def composed(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)


def test_the_presets_are_all_listed():
    assert sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")) == sorted([*PRESETS, *DISTILL_PRESETS, "smoke",
                                                                                     "finetune"])


def test_every_preset_names_its_runs_after_itself():
    """resume=auto continues the newest run of the same name: each preset's runs are named after it, apart from
    every other preset's and from the default run's (python train.py)."""
    presets = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
    names = {preset: composed(f"experiment={preset}").name for preset in presets}
    assert all(preset in name for preset, name in names.items()), names
    assert len(set(names.values())) == len(names) and composed().name not in names.values()


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_as_its_source_states(preset):
    backbone, loss, dataset, optimizer, lr, reference_batch, epochs = PRESETS[preset]
    cfg = composed(f"experiment={preset}")
    assert (cfg.name, cfg.backbone.name, cfg.loss.name, cfg.dataset.name) == (preset, backbone, loss, dataset)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.reference_batch) == (optimizer, lr, reference_batch)
    assert cfg.trainer.max_epochs == epochs and cfg.trainer.max_steps is None and cfg.embedding_size == 512
    assert (CONFIGS / "experiment" / f"{preset}.yaml").read_text().startswith("# @package _global_\n")


def test_x2softmax_preset_is_the_papers_schedule():
    cfg = composed("experiment=ms1mv3_r50_x2softmax")
    assert (cfg.loss.s, cfg.loss.a, cfg.loss.h, cfg.loss.k) == (64.0, -0.9, 0.0, 0.65)
    assert cfg.scheduler.name == "multistep" and list(cfg.scheduler.milestones) == [8, 14, 20, 25]
    assert (cfg.scheduler.gamma, cfg.optimizer.weight_decay, cfg.trainer.batch_size) == (0.1, 5e-4, 128)


def test_wf42m_presets_are_arcface_torch_s_vit_runs():
    for preset, dim, depth, drop_path, mask, accum in (("wf42m_vit_t", 256, 12, 0.05, 0.0, 1), ("wf42m_vit_b", 512, 24, 0.05, 0.05, 12)):
        cfg = composed(f"experiment={preset}")
        assert (cfg.backbone.embed_dim, cfg.backbone.depth, cfg.backbone.drop_path_rate, cfg.backbone.mask_ratio) == (
            dim, depth, drop_path, mask)
        assert (cfg.head.sample_rate, cfg.loss.m, cfg.optimizer.weight_decay, cfg.scheduler.warmup_epochs) == (0.3, 0.4, 0.1, 4.0)
        assert cfg.trainer.grad_accum == accum
    assert composed("experiment=wf42m_r50").head.sample_rate == 0.2


# a ViT preset keeps its backbone (its keys are the ViT's), two blocks of width 32
TINY_VIT = ["backbone.depth=2", "backbone.embed_dim=32", "backbone.num_heads=2", "backbone.activation_checkpointing=false"]


def test_every_preset_trains_two_steps_in_one_process(tmp_path, cache_dir, monkeypatch, one_thread):
    monkeypatch.setenv("FACETRAIN_CACHE", str(cache_dir))
    for preset, (backbone, loss, _, _, lr, reference_batch, _) in PRESETS.items():
        tiny = [*(TINY_VIT if backbone.startswith("vit") else TINY[6:9]), *TINY[:6], *TINY[9:], "trainer.grad_accum=1"]
        cfg = composed(f"experiment={preset}", *tiny, hydra=True)
        run_dir = tmp_path / preset
        cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        metrics = run(cfg)
        assert metrics["step"] == 2 and torch.isfinite(torch.tensor(metrics["train_loss"])), preset
        assert cfg.loss.name == loss and cfg.name == preset
        log = (run_dir / "train.log").read_text()
        scaled = float(re.search(r"lr (\S+) for this run's global batch of 4 ", log).group(1))
        assert scaled == pytest.approx(lr * 4 / reference_batch, rel=1e-3), preset
        assert (run_dir / "checkpoints" / "step_000000002.pt").is_file()


def test_distillation_presets_are_their_recipe_plus_a_teacher_and_train_two_steps(tmp_path, cache_dir, monkeypatch,
                                                                                  one_thread):
    monkeypatch.setenv("FACETRAIN_CACHE", str(cache_dir))
    teacher = write_checkpoint(tmp_path / "teacher.pt", embedding_size=48)  # a 48-d teacher: the student projects
    export_onnx(teacher, tmp_path / "teacher.onnx")
    for preset, (recipe, loss) in DISTILL_PRESETS.items():
        cfg = composed(f"experiment={preset}")
        assert (cfg.name, cfg.distill.name, cfg.distill.weight) == (preset, loss, 1.0)
        if recipe is not None:
            base = composed(f"experiment={recipe}")
            assert all(cfg[key] == base[key] for key in ("backbone", "loss", "dataset", "optimizer", "embedding_size"))
        with pytest.raises(ConfigError, match=f"distill={loss} needs a teacher"):
            check_config(cfg)
        cfg = composed(f"experiment={preset}", *TINY, "trainer.images_per_identity=2",
                       f"distill.teacher={tmp_path / 'teacher.onnx'}", hydra=True)
        cfg.hydra.runtime.output_dir = str(tmp_path / preset)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        assert run(cfg)["step"] == 2
        state = torch.load(tmp_path / preset / "checkpoints" / "step_000000002.pt", weights_only=False)
        assert ("distill.loss.projection.weight" in state["terms"]) == (loss == "feature")  # ekd: any sizes


def test_the_ekd_preset_is_tfaces_recipe():
    """TFace 171ec143 recognition/tasks/ekd/train.yaml: MobileFaceNet, ArcFace 64/0.4, 32 + 32 images, SGD 0.1 with
    steps at 10, 18, 22 of 26 epochs, weight decay 5e-4, EKD with its settings."""
    cfg = composed("experiment=ms1mv3_mbf_ekd")
    assert (cfg.backbone.name, list(cfg.backbone.blocks), cfg.backbone.scale, cfg.embedding_size) == ("mbf", [1, 4, 6, 2], 1, 512)
    assert (cfg.loss.name, cfg.loss.s, cfg.loss.m) == ("arcface", 64.0, 0.4)
    assert (cfg.trainer.batch_size, cfg.trainer.sampler.value, cfg.trainer.images_per_identity) == (64, "mixed", 4)
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
    assert (list(cfg.scheduler.milestones), cfg.scheduler.gamma, cfg.trainer.max_epochs) == ([10, 18, 22], 0.1, 26)
    assert (cfg.distill.name, list(cfg.distill.fprs), cfg.distill.momentum, cfg.distill.temperature) == (
        "ekd", [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6], 0.01, 0.01)
    assert (cfg.distill.top_k, cfg.distill.positive_weight, cfg.distill.negative_weight) == (2000, 0.02, 0.01)


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 256, 1024) == pytest.approx(0.025)
    assert scaled_lr(0.1, 2048, 1024) == pytest.approx(0.2)
    assert scaled_lr(0.05, 256, None) == 0.05  # no reference batch: lr as given
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = build_optimizer(params, "sgd", global_batch=512, reference_batch=1024, lr=0.1, weight_decay=0.0,
                                momentum=0.9, nesterov=False)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="global_batch"):
        build_optimizer(params, "sgd", reference_batch=1024, lr=0.1, weight_decay=0.0, momentum=0.9, nesterov=False)


def test_a_reference_batch_below_one_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"optimizer.reference_batch=0 is out of range"):
        check_config(composed("experiment=smoke", "optimizer.reference_batch=0"))
