"""``run(cfg)``: build everything a training run needs from the config, then hand it to the Trainer."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from facetrain.backbones import build_backbone
from facetrain.data import TrainData, build_train_data, resolve_targets
from facetrain.cores import capped_workers, usable_cores
from facetrain.distill.term import build_distillation
from facetrain.cpu_memory import reuse_freed_memory
from facetrain.parallel.groups import DistInfo, dist_info, set_timeout
from facetrain.engine.finetune import freeze_batch_norm, init_head_from_class_means, load_backbone_weights, matches
from facetrain.runs.logging import setup_logging
from facetrain.engine.model import FaceModel
from facetrain.engine.optim import build_optimizer, build_scheduler
from facetrain.runs.resume import (check_same_data, load_resume_state, merge_resume_config, override_keys,
                                     rescale_max_steps)
from facetrain.runs.run_dir import auto_resume_note, has_checkpoints
from facetrain.parallel.sync_bn import sync_batchnorm
from facetrain.runs.trackers import Tracker, open_trackers
from facetrain.engine.settings import TrainerSettings
from facetrain.engine.trainer import Trainer
from facetrain.config.checks import check_config
from facetrain.errors import ConfigError
from facetrain.eval.callback import VerificationCallback
from facetrain.heads import Head, build_head
from facetrain.heads.checks import check_margin
from facetrain.heads.sharded import shard_head
from facetrain.plural import counted

log = logging.getLogger("facetrain")


def hparams(node: DictConfig) -> dict[str, Any]:
    """A config group as plain keyword arguments, without its ``name``."""
    values = OmegaConf.to_container(node, resolve=True, enum_to_str=True, throw_on_missing=True)
    values.pop("name", None)
    return values


def select_device(kind: str, local_rank: int) -> torch.device:
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible", "use trainer.device=cpu (or auto)")
    if kind in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def select_amp_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype for ``trainer.precision`` (None = fp32). ``auto`` is fp32 on the CPU; fp16 runs on
    the CPU too (torch's CPU autocast and GradScaler), which is how the tests drive its loss scaling."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def shards_head(parallel: str, sample_rate: float, world_size: int) -> bool:
    """Whether the head's classes are split over ranks: ``head.parallel=model``, or ``auto`` with more
    than one process or with Partial FC (``sample_rate < 1``)."""
    if parallel == "data":
        if sample_rate < 1.0:
            raise ConfigError(f"head.sample_rate={sample_rate} (Partial FC) needs the sharded head",
                              "set head.parallel=model (or auto), or head.sample_rate=1.0")
        return False
    return parallel == "model" or world_size > 1 or sample_rate < 1.0


def build_model(backbone: torch.nn.Module, head: Head, build: Callable[[int], Head], sharded: bool, sample_rate: float,
                sync_bn: bool, dist: DistInfo, device: torch.device,
                terms: Optional[dict[str, torch.nn.Module]] = None) -> FaceModel:
    """Backbone, head and extra loss ``terms`` laid out for ``dist``'s processes: the head split over ranks when
    ``sharded`` (``build(n)`` makes the head for ``n`` classes), batch norm synchronised when ``sync_bn``."""
    if sharded:
        head = shard_head(head, build, sample_rate)
    if sync_bn and dist.enabled:
        backbone = sync_batchnorm(backbone, device)
    return FaceModel(backbone, head, terms).to(device)


def distillation_terms(cfg: DictConfig, data: TrainData, device: torch.device, sharded: bool) -> dict[str, torch.nn.Module]:
    """``distill=<name>``'s term with its teacher loaded on ``device`` (every rank loads its own), none for
    ``distill=none``."""
    if cfg.distill.name == "none":
        return {}
    keys = hparams(cfg.distill)
    teacher, weight = keys.pop("teacher"), keys.pop("weight")
    term = build_distillation(cfg.distill.name, teacher, weight, cfg.embedding_size, device, len(data.dataset),
                              data.num_classes, cfg.trainer.channels_last, sharded, **keys)
    log.info(f"distillation: {term.extra_repr()} ({term.teacher.embedding_size}-d, sha256 {term.teacher.sha256[:12]})")
    return {"distill": term}


def check_training_config(cfg: DictConfig) -> None:
    """Every key's rule (:func:`facetrain.config.checks.check_config`), then the head's margins against its
    formula (:func:`facetrain.heads.checks.check_margin`): one line at the first problem, before anything is built."""
    check_config(cfg)
    check_margin(OmegaConf.to_container(cfg.loss, resolve=True, enum_to_str=True))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_batch(cfg: DictConfig, dist: DistInfo) -> int:
    """Images per optimizer step: ``trainer.batch_size`` x processes x ``trainer.grad_accum``."""
    return cfg.trainer.batch_size * dist.world_size * cfg.trainer.grad_accum


def build_trainer(cfg: DictConfig, data: TrainData, run_dir: Path, dist: DistInfo, device: torch.device,
                  evaluate: bool = True, fresh: bool = True, tracker: Optional[Tracker] = None) -> Trainer:
    """The model, optimizer, schedule and (with ``evaluate``, on rank 0) verification of ``cfg``, in a
    Trainer for ``data`` on ``device``: what ``run`` trains and ``scripts/benchmark.py train`` times.
    A ``fresh`` run (not a resume) starts as ``init.*`` says; ``tracker`` is told what TensorBoard is."""
    torch.backends.cudnn.benchmark = cfg.trainer.cudnn_benchmark
    if device.type == "cpu" and cfg.trainer.reuse_cpu_memory:
        reuse_freed_memory()

    def build(num_classes: int) -> Head:
        return build_head(cfg.loss.name, cfg.embedding_size, num_classes, **hparams(cfg.loss))

    sharded = shards_head(cfg.head.parallel.value, cfg.head.sample_rate, dist.world_size)
    workers = data_workers(cfg.trainer.num_workers)
    with torch.random.fork_rng(devices=[]):  # every rank draws the same initial weights, whatever the world size
        torch.manual_seed(cfg.seed)
        backbone = build_backbone(cfg.backbone.name, cfg.embedding_size, **hparams(cfg.backbone))
        if fresh and cfg.init.backbone is not None:
            load_backbone_weights(cfg.init.backbone, backbone, cfg.backbone.name, hparams(cfg.backbone),
                                  cfg.embedding_size, cfg.init.input_order.value, cfg.init.strict)
        model = build_model(backbone, build(data.num_classes), build, sharded, cfg.head.sample_rate,
                            cfg.trainer.sync_bn, dist, device, distillation_terms(cfg, data, device, sharded))
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fresh and cfg.init.head.value == "class_mean":
        init_head_from_class_means(model.head, model.backbone, data.dataset, dist, device, cfg.trainer.batch_size,
                                   workers)
    if cfg.finetune.freeze_batch_norm:
        log.info(f"finetune.freeze_batch_norm: {freeze_batch_norm(model.backbone)} batch norm layers keep their statistics")
    if cfg.trainer.compile:
        model.compile_backbone(cfg.trainer.compile_mode)
    step_batch = global_batch(cfg, dist)
    lr_scales = {"backbone": cfg.finetune.backbone_lr_scale} if cfg.finetune.backbone_lr_scale != 1.0 else {}
    optimizer = build_optimizer(model, cfg.optimizer.name, fused=cfg.trainer.fused_optimizer, global_batch=step_batch,
                                lr_scales=lr_scales, **hparams(cfg.optimizer))
    if cfg.optimizer.reference_batch is not None:
        log.info(f"optimizer.lr {cfg.optimizer.lr:g} is given for a global batch of {cfg.optimizer.reference_batch}: "
                 f"lr {optimizer.param_groups[0]['lr']:.4g} for this run's global batch of {step_batch} (linear scaling)")
    steps_per_epoch = len(data.dataset) // step_batch
    if steps_per_epoch == 0:
        raise ConfigError(f"the global batch ({step_batch}) is larger than the dataset ({len(data.dataset)} images)",
                          "lower trainer.batch_size")
    total_steps = cfg.trainer.max_steps or cfg.trainer.max_epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg.scheduler.name, total_steps, steps_per_epoch, **hparams(cfg.scheduler))

    evaluator = None
    if evaluate and dist.is_main and cfg.eval.targets:
        evaluator = VerificationCallback(resolve_targets(list(cfg.eval.targets), data.root), device,
                                         cfg.eval.batch_size, cfg.eval.flip.value, cfg.trainer.channels_last)
        for key in ("checkpoint.best_metric", "sweep.objective"):
            target = OmegaConf.select(cfg, key)
            if target is not None and target not in evaluator.sets:
                raise ConfigError(f"{key}={target} is not an eval target",
                                  f"choose one of: {', '.join(evaluator.sets)} (or null for the first)")
    settings = TrainerSettings(
        run_dir=run_dir, total_steps=total_steps, batch_size=cfg.trainer.batch_size, seed=cfg.seed, device=device,
        amp_dtype=select_amp_dtype(cfg.trainer.precision.value, device), grad_clip=cfg.trainer.grad_clip,
        log_every=cfg.trainer.log_every, num_workers=workers, hflip=cfg.trainer.hflip,
        channels_last=cfg.trainer.channels_last, checkpoint_every=cfg.checkpoint.every_steps,
        keep_last=cfg.checkpoint.keep_last, save_best=cfg.checkpoint.save_best, best_metric=cfg.checkpoint.best_metric,
        max_nonfinite=cfg.trainer.max_nonfinite, eval_every=cfg.eval.every_steps, eval_at_start=cfg.eval.at_start,
        progress_bar=cfg.trainer.progress_bar, config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        ddp_bucket_cap_mb=cfg.trainer.ddp_bucket_cap_mb, grad_accum=cfg.trainer.grad_accum,
        sampler=cfg.trainer.sampler.value, images_per_identity=cfg.trainer.images_per_identity,
        loss_scale_growth_interval=cfg.trainer.loss_scale_growth_interval,
        frozen=frozen_prefixes(cfg, model), frozen_steps=cfg.finetune.frozen_steps,
    )
    return Trainer(model, optimizer, scheduler, data.dataset, settings, dist, evaluator, tracker)


def data_workers(requested: int) -> int:
    """``trainer.num_workers``, at most one DataLoader worker per core this process may use (a preset's 8 on a
    2-core machine would only share the 2 cores); train.log says when it capped them."""
    workers = capped_workers(requested)
    if workers < requested:
        log.info(f"trainer.num_workers={requested}, but this process may use {counted(usable_cores(), 'CPU core')}: "
                 f"{counted(workers, 'DataLoader worker')}")
    return workers


def frozen_prefixes(cfg: DictConfig, model: torch.nn.Module) -> tuple[str, ...]:
    """``finetune.frozen``, each checked to name parameters of ``model``."""
    prefixes = tuple(cfg.finetune.frozen)
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(matches(name, (prefix,)) for name in names):
            tops = sorted({name.split(".")[0] for name in names})
            raise ConfigError(f"finetune.frozen names '{prefix}', which is no parameter (or module) of the model",
                              f"name parameter prefixes such as {', '.join(tops)}, or backbone.<module>")
    return prefixes


def refuse_init_with_resume(cfg: DictConfig, overrides: list[str]) -> None:
    """``init.*`` (start a new run from weights) on the same command line as ``resume`` (continue a run)."""
    given = [key for key in override_keys(overrides) if key.split(".")[0] == "init"]
    if cfg.resume is not None and given:
        raise ConfigError(f"{given[0]} starts a new run from weights, but resume={cfg.resume} continues a run",
                          "drop resume to start from the weights, or drop init.* to continue the run")


def refuse_a_second_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """``resume=<run_dir>`` names the run to continue, and that is where it writes: a ``hydra.run.dir``
    elsewhere would silently start a fresh run there."""
    if cfg.resume not in (None, "auto") and Path(cfg.resume).resolve() != run_dir.resolve():
        raise ConfigError(f"resume={cfg.resume} and hydra.run.dir={run_dir} name different runs",
                          "drop hydra.run.dir: a resumed run writes into the run it resumes")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says (resuming if ``cfg.resume`` is set, or when a sweep job's directory holds
    checkpoints: the job was stopped and re-queued, or its sweep is run again); returns the final metrics."""
    dist = dist_info()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    setup_logging(run_dir, dist.is_main)
    checkpoint = None
    refuse_init_with_resume(cfg, list(HydraConfig.get().overrides.task))
    refuse_a_second_run_dir(cfg, run_dir)
    sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
    if (cfg.resume is not None or sweep_job) and has_checkpoints(run_dir):
        checkpoint = load_resume_state(run_dir)
        if cfg.resume == "auto" and not sweep_job:
            log.info(auto_resume_note(cfg.output_root, cfg.name, run_dir, checkpoint["step"]))
        cfg = merge_resume_config(cfg, list(HydraConfig.get().overrides.task), checkpoint["config"])
    elif cfg.resume == "auto":
        log.info(f"resume=auto: no earlier run of '{cfg.name}' with a checkpoint, starting a fresh one")
    check_training_config(cfg)
    set_timeout(cfg.trainer.dist_timeout_s)
    log.info(f"run directory {run_dir}" + (f" (resuming at step {checkpoint['step']})" if checkpoint else ""))
    with open_trackers(cfg.logger, run_dir, cfg.name, cfg.output_root, dist.is_main) as tracker:
        metrics = train(cfg, run_dir, dist, checkpoint, tracker)
    log.info(f"done: {metrics}")
    return metrics


def train(cfg: DictConfig, run_dir: Path, dist: DistInfo, checkpoint: Optional[dict[str, Any]],
          tracker: Tracker) -> dict[str, Any]:
    """Build the data and the trainer of a checked ``cfg`` (continuing ``checkpoint`` if given), train, and
    return the final metrics."""
    seed_everything(cfg.seed + dist.rank)
    device = select_device(cfg.trainer.device.value, dist.local_rank)
    data = build_train_data(cfg.dataset.name, **hparams(cfg.dataset))
    log.info(f"dataset {cfg.dataset.name}: {len(data.dataset)} images of {data.num_classes} identities at {data.root}")
    if checkpoint is not None:
        check_same_data(checkpoint, len(data.dataset), data.num_classes)
        rescale_max_steps(cfg, list(HydraConfig.get().overrides.task), checkpoint, global_batch(cfg, dist),
                          len(data.dataset))
    trainer = build_trainer(cfg, data, run_dir, dist, device, fresh=checkpoint is None, tracker=tracker)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    log.info(f"training {cfg.backbone.name} + {cfg.loss.name} for {counted(trainer.s.total_steps, 'step')} "
             f"({trainer.steps_per_epoch} per epoch, global batch {trainer.step_batch}) on {device}"
             + (f", head split over {dist.world_size} rank{'s' if dist.world_size > 1 else ''} (sample_rate {cfg.head.sample_rate})" if trainer.rank_local else ""))
    return trainer.fit()
