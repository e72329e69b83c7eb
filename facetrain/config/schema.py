"""The top-level training config (``configs/train.yaml``'s keys) and the registration of every schema in
Hydra's ConfigStore.

Each YAML file under ``configs/<group>/<name>.yaml`` starts from ``/schema/<group>/<kind>``, so an
unknown key or a value of the wrong type fails when the config is composed. The YAML files hold the
values; the schemas hold the types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from facetrain.config.choices import ChannelOrder, DeviceKind, FlipMode, HeadInit, HeadParallel, Precision, SamplerKind
from facetrain.config.groups import SCHEMAS


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = None  # takes precedence over max_epochs when set
    max_epochs: int = 20
    batch_size: int = 128  # per process
    precision: Precision = Precision.auto
    grad_clip: Optional[float] = None  # max global grad norm; null disables
    log_every: int = 50
    device: DeviceKind = DeviceKind.auto
    num_workers: int = 4
    hflip: float = 0.5  # probability of a horizontal flip, applied on the device
    channels_last: bool = True
    cudnn_benchmark: bool = True
    fused_optimizer: bool = True  # one fused kernel per optimizer step (CPU and CUDA); false: torch's default
    reuse_cpu_memory: bool = True  # CPU training (glibc): keep freed memory in the process, no page faults per step
    compile: bool = False  # torch.compile the backbone's training forward (evaluation stays eager)
    compile_mode: str = "default"  # one of COMPILE_MODES; reduce-overhead adds CUDA graphs
    ddp_bucket_cap_mb: float = 25.0  # DDP gradient bucket size (torch's default 25)
    progress_bar: bool = True
    max_nonfinite: int = 5  # stop after this many consecutive NaN/Inf steps (fp32/bf16; 0: never stop)
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = batch_size x processes x grad_accum)
    sync_bn: bool = False  # batch-norm statistics over every rank's batch
    dist_timeout_s: float = 1800.0  # a collective waiting longer for another rank fails the run
    loss_scale_growth_interval: int = 100  # fp16: clean steps before the loss scale doubles (arcface_torch's 100)
    sampler: SamplerKind = SamplerKind.random  # how batches are drawn: random, balanced (P x K) or mixed (half each)
    images_per_identity: int = 4  # K of the balanced samplers (TFace's 4)


@dataclass
class HeadConfig:
    """How the loss head (``loss=``) is laid out over processes, whatever the head."""

    parallel: HeadParallel = HeadParallel.auto
    sample_rate: float = 1.0  # Partial FC: fraction of each rank's classes scored per step (all positives kept)


@dataclass
class InitConfig:
    """How a new run starts (not a resume): the backbone from a weight file, the head from class means."""

    backbone: Optional[str] = None  # a released weight file, facetrain checkpoint or run directory
    strict: bool = True  # refuse a file that leaves backbone tensors out (a torchvision file's embedding layer)
    input_order: ChannelOrder = ChannelOrder.auto  # the channel order the file's model was trained on
    head: HeadInit = HeadInit.random


@dataclass
class FinetuneConfig:
    """Training a pretrained backbone on new identities."""

    backbone_lr_scale: float = 1.0  # the backbone's lr is optimizer.lr x this (the head's: optimizer.lr)
    frozen: list[str] = field(default_factory=list)  # parameter-name prefixes that do not train, e.g. [backbone]
    frozen_steps: Optional[int] = None  # ... for the first N optimizer steps; null: for the whole run
    freeze_batch_norm: bool = False  # the backbone's batch norm keeps (and uses) the running statistics it starts with


@dataclass
class CheckpointConfig:
    every_steps: int = 1000  # 0: only at the end (and on preemption)
    keep_last: int = 3  # newest step_N.pt files kept; 0 keeps all
    save_best: bool = True  # also keep best.pt, the weights with the best best_metric accuracy
    best_metric: Optional[str] = None  # an eval target; null: the first of eval.targets


@dataclass
class EvalConfig:
    every_steps: int = 2000  # also evaluated at the end of training
    at_start: bool = True
    targets: list[str] = MISSING  # names of <dataset.root>/<name>.bin, or paths to .bin files
    batch_size: int = 256
    flip: FlipMode = FlipMode.sum


@dataclass
class SweepConfig:
    """Multirun (``-m``) sweeps: where they write and what each job returns to the sweeper."""

    name: Optional[str] = None  # <output_root>/multirun/<name>/; null: the start time
    objective: Optional[str] = None  # the eval target whose best accuracy a job returns; null: checkpoint.best_metric


@dataclass
class MLflowConfig:
    enabled: bool = False  # on with logger=[tensorboard,mlflow]
    tracking_uri: Optional[str] = None  # null: a file store in <output_root>/mlruns
    experiment: Optional[str] = None  # null: the run's name


@dataclass
class WandbConfig:
    enabled: bool = False  # on with logger=[tensorboard,wandb]
    project: str = "facetrain"
    entity: Optional[str] = None  # null: the logged-in user's default
    mode: Optional[str] = None  # online | offline | disabled; null: $WANDB_MODE, else online


@dataclass
class LoggerConfig:
    """Experiment trackers beside TensorBoard (always written): each is on when its ``logger=`` file is chosen."""

    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class TrainConfig:
    name: str = MISSING  # experiment name: runs go to <output_root>/<name>/<timestamp>
    seed: int = 0
    embedding_size: int = 512
    resume: Optional[str] = None  # null | auto | <run_dir>
    output_root: str = "outputs"
    backbone: Any = MISSING
    loss: Any = MISSING
    head: HeadConfig = field(default_factory=HeadConfig)
    init: InitConfig = field(default_factory=InitConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dataset: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    # configs/distill/: none by default (and in the configs of runs saved before distillation existed)
    distill: Any = field(default_factory=lambda: {"name": "none", "teacher": None, "weight": 0.0})



# Config groups whose choice defines what is trained: a resumed run may not change them.
IDENTITY_KEYS = ("backbone", "loss.name", "embedding_size", "dataset.name", "dataset.num_classes", "optimizer.name")


def register_schemas() -> None:
    """Store the top-level schema as ``train_schema`` and each group schema as ``/schema/<group>/<kind>``."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, kinds in SCHEMAS.items():
        for kind, schema in kinds.items():
            store.store(group=f"schema/{group}", name=kind, node=schema)

