"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML file under ``configs/<group>/<name>.yaml`` starts from ``/schema/<group>/<kind>``, so an
unknown key or a value of the wrong type fails when the config is composed. The YAML files hold the
values; the schemas hold the types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from facetrain.engine.plugins import store_plugin_configs


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # trainer.compile_mode


class Precision(Enum):
    auto = "auto"  # bf16 on GPUs that support it, else fp16 with a GradScaler; fp32 on CPU
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class DeviceKind(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class FlipMode(Enum):
    sum = "sum"
    concat = "concat"
    none = "none"


class HeadParallel(Enum):
    auto = "auto"  # model with more than one process (or sample_rate < 1), else data
    model = "model"  # class centres split over the ranks, embeddings gathered
    data = "data"  # every rank holds the whole head, gradients averaged by DDP


class ArcFaceVariant(Enum):
    fallback = "fallback"  # cos(theta+m) while theta+m <= pi, else cos - m*sin(m) (arcface_torch before Dec 2022)
    easy = "easy"  # cos(theta+m) where cos > 0, else cos
    plain = "plain"  # cos(theta+m) everywhere


class ElasticKind(Enum):
    arc = "arc"  # cos(theta + m_i)
    cos = "cos"  # cos(theta) - m_i


class HeadInit(Enum):
    random = "random"  # the head's own initialisation
    class_mean = "class_mean"  # each class centre at the mean embedding of its images under the initial backbone


class ChannelOrder(Enum):
    auto = "auto"  # what the file's layout says (AdaFace: BGR; the others: RGB)
    rgb = "rgb"
    bgr = "bgr"


class ElasticAssignment(Enum):
    paper = "paper"  # ElasticFace+: the sample closest to its centre gets the smallest margin
    official = "official"  # the official code's margin[argsort(cos)] indexing


# ---- backbone -----------------------------------------------------------------------------------
@dataclass
class BackboneConfig:
    name: str = MISSING
    # recompute each block's activations in the backward pass: less memory for more compute (IResNet, IR,
    # ViT, timm networks that support it; refused by the others)
    activation_checkpointing: bool = False


@dataclass
class IResNetConfig(BackboneConfig):
    dropout: float = MISSING
    zero_init_residual: bool = MISSING


@dataclass
class MobileFaceNetConfig(BackboneConfig):
    blocks: list[int] = MISSING
    scale: int = MISSING


@dataclass
class TorchvisionConfig(BackboneConfig):
    dropout: float = MISSING


@dataclass
class IRConfig(BackboneConfig):
    dropout: float = MISSING  # before the output FC (AdaFace's 0.4)


@dataclass
class ViTConfig(BackboneConfig):
    image_size: int = MISSING
    patch_size: int = MISSING
    embed_dim: int = MISSING
    depth: int = MISSING
    num_heads: int = MISSING
    mlp_ratio: float = MISSING
    drop_path_rate: float = MISSING  # stochastic depth, rising linearly to this over the blocks
    mask_ratio: float = MISSING  # fraction of patch tokens replaced by the mask token while training


@dataclass
class TimmConfig(BackboneConfig):
    model: str = MISSING  # any timm.list_models() name
    weights: Optional[str] = None  # a local file of timm weights (never downloaded)
    dropout: float = MISSING


# ---- loss heads ---------------------------------------------------------------------------------
@dataclass
class LossConfig:
    name: str = MISSING


@dataclass
class SoftmaxConfig(LossConfig):
    bias: bool = MISSING


@dataclass
class CosFaceConfig(LossConfig):
    s: float = MISSING
    m: float = MISSING


@dataclass
class ArcFaceConfig(LossConfig):
    s: float = MISSING
    m: float = MISSING
    variant: ArcFaceVariant = MISSING
    straight_through: bool = MISSING  # the target's value, the gradient of s*cos (today's arcface_torch with plain)


@dataclass
class NormFaceConfig(LossConfig):
    s: float = MISSING


@dataclass
class CenterLossConfig(LossConfig):
    lambda_c: float = MISSING
    alpha: float = MISSING
    base: str = MISSING  # the wrapped head (a configs/loss name), built with base_args
    base_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SphereFaceConfig(LossConfig):
    m: int = MISSING
    base: float = MISSING
    gamma: float = MISSING
    power: float = MISSING
    lambda_min: float = MISSING


@dataclass
class CombinedMarginConfig(LossConfig):
    s: float = MISSING
    m1: float = MISSING
    m2: float = MISSING
    m3: float = MISSING
    straight_through: bool = MISSING  # the angular part's gradient is that of cos (today's arcface_torch)


@dataclass
class X2SoftmaxConfig(LossConfig):
    s: float = MISSING
    a: float = MISSING
    h: float = MISSING
    k: float = MISSING
    straight_through: bool = MISSING


@dataclass
class AdaFaceConfig(LossConfig):
    s: float = MISSING
    m: float = MISSING
    h: float = MISSING
    t_alpha: float = MISSING


@dataclass
class MagFaceConfig(LossConfig):
    s: float = MISSING
    l_a: float = MISSING
    u_a: float = MISSING
    l_m: float = MISSING
    u_m: float = MISSING
    lambda_g: float = MISSING
    variant: ArcFaceVariant = MISSING


@dataclass
class CurricularFaceConfig(LossConfig):
    s: float = MISSING
    m: float = MISSING
    t_alpha: float = MISSING


@dataclass
class ElasticFaceConfig(LossConfig):
    s: float = MISSING
    m: Optional[float] = MISSING  # null: 0.5 for kind=arc, 0.35 for kind=cos
    sigma: Optional[float] = MISSING  # null: 0.05; with plus, 0.0175 (arc) or 0.02 (cos), the official config's
    kind: ElasticKind = MISSING
    plus: bool = MISSING
    plus_assignment: ElasticAssignment = MISSING


@dataclass
class SubCenterArcFaceConfig(LossConfig):
    s: float = MISSING
    m: float = MISSING
    k: int = MISSING
    variant: ArcFaceVariant = MISSING
    straight_through: bool = MISSING


# ---- datasets -----------------------------------------------------------------------------------
@dataclass
class AugmentConfig:
    """CPU-side extras (albumentations), each with its probability (0 = off); randomness from
    (seed, epoch, index). The horizontal flip is ``trainer.hflip``, applied on the device."""

    seed: int = II("seed")
    random_resized_crop: float = 0.0
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])  # area fraction kept
    color_jitter: float = 0.0
    jitter_strength: float = 0.2  # brightness, contrast, saturation +- this; hue +- a quarter of it
    grayscale: float = 0.0
    blur: float = 0.0
    jpeg_compression: float = 0.0
    jpeg_quality: list[int] = field(default_factory=lambda: [40, 95])
    coarse_dropout: float = 0.0  # one occluding rectangle
    dropout_size: list[float] = field(default_factory=lambda: [0.1, 0.3])  # its sides, fraction of the image


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: Optional[str] = MISSING
    num_classes: Optional[int] = MISSING
    val_targets: list[str] = MISSING
    max_bad_fraction: float = 0.001  # unreadable samples are skipped with a warning; more than this stops the run
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ImageFolderConfig(DatasetConfig):
    # raw photos (most images not squares of at most 4x the training size) stop the run with a pointer to
    # scripts/align.py; true trains on them squashed to 112x112
    resize_unaligned: bool = False


@dataclass
class SyntheticConfig(DatasetConfig):
    images_per_class: int = MISSING
    val_identities: int = MISSING
    val_images_per_identity: int = MISSING
    val_pairs: int = MISSING
    seed: int = MISSING


# ---- optimisation -------------------------------------------------------------------------------
@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    # The global batch (images per optimizer step, all processes) that ``lr`` is given for: the run uses
    # lr * its global batch / reference_batch (linear scaling). null: lr is used as given.
    reference_batch: Optional[int] = None
    # no weight decay on biases, normalisation and other 1-D weights (PReLU's too), nor on what the backbone
    # names in no_weight_decay() (a ViT's position embedding and mask token), as timm's ViT recipes train
    no_decay_norm_bias: bool = False


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamWConfig(OptimizerConfig):
    betas: list[float] = MISSING
    eps: float = MISSING


@dataclass
class SchedulerConfig:
    name: str = MISSING
    warmup_epochs: float = MISSING


@dataclass
class PolyConfig(SchedulerConfig):
    power: float = MISSING


@dataclass
class MultiStepConfig(SchedulerConfig):
    milestones: list[float] = MISSING  # epochs
    gamma: float = MISSING


@dataclass
class CosineConfig(SchedulerConfig):
    min_lr_ratio: float = MISSING


# ---- top level ----------------------------------------------------------------------------------
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


SCHEMAS: dict[str, dict[str, type]] = {
    "backbone": {"iresnet": IResNetConfig, "mobilefacenet": MobileFaceNetConfig, "torchvision": TorchvisionConfig,
                 "ir": IRConfig, "vit": ViTConfig, "timm": TimmConfig},
    "loss": {
        "softmax": SoftmaxConfig, "normface": NormFaceConfig, "center": CenterLossConfig, "sphereface": SphereFaceConfig,
        "cosface": CosFaceConfig, "arcface": ArcFaceConfig, "combined": CombinedMarginConfig,
        "x2softmax": X2SoftmaxConfig, "adaface": AdaFaceConfig, "magface": MagFaceConfig,
        "curricularface": CurricularFaceConfig, "elasticface": ElasticFaceConfig,
        "subcenter_arcface": SubCenterArcFaceConfig,
    },
    "dataset": {"synthetic": SyntheticConfig, "rec": DatasetConfig, "imagefolder": ImageFolderConfig},
    "optimizer": {"sgd": SGDConfig, "adamw": AdamWConfig},
    "scheduler": {"poly": PolyConfig, "multistep": MultiStepConfig, "cosine": CosineConfig},
}

# Config groups whose choice defines what is trained: a resumed run may not change them.
IDENTITY_KEYS = ("backbone", "loss.name", "embedding_size", "dataset.name", "dataset.num_classes", "optimizer.name")


def register_schemas() -> None:
    """Store the top-level schema as ``train_schema``, each group schema as ``/schema/<group>/<kind>``, and
    facetrain's config of each installed Hydra plugin (:mod:`facetrain.engine.plugins`)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store_plugin_configs()
    for group, kinds in SCHEMAS.items():
        for kind, schema in kinds.items():
            store.store(group=f"schema/{group}", name=kind, node=schema)
