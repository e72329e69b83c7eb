"""Schemas of the config groups whose option a YAML file picks (``backbone=``, ``loss=``, ``dataset=``,
``optimizer=``, ``scheduler=``): one dataclass per kind, stored as ``/schema/<group>/<kind>``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import II, MISSING

from facetrain.config.choices import ArcFaceVariant, ElasticAssignment, ElasticKind


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
    interclass_filtering_threshold: float = MISSING  # > 0: non-target cosines above it count 0 (arcface_torch's filter)


@dataclass
class ArcFaceConfig(LossConfig):
    s: float = MISSING
    m: float = MISSING
    variant: ArcFaceVariant = MISSING
    straight_through: bool = MISSING  # the target's value, the gradient of s*cos (today's arcface_torch with plain)
    interclass_filtering_threshold: float = MISSING  # > 0: non-target cosines above it count 0 (arcface_torch's filter)


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
    interclass_filtering_threshold: float = MISSING  # > 0: non-target cosines above it count 0 (arcface_torch's filter)


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
    interclass_filtering_threshold: float = MISSING  # > 0: non-target cosines above it count 0 (arcface_torch's filter)


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
    # text files of sample indices (one a line; scripts/clean_dataset.py writes them): train on the samples
    # include names (null: all) less those exclude names; classes left without images are renumbered away
    include: Optional[str] = None
    exclude: Optional[str] = None
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


# ---- distillation (facetrain.distill) ------------------------------------------------------------
@dataclass
class DistillConfig:
    name: str = MISSING  # none, or a facetrain.distill loss: the term distill.weight * loss(student, teacher)
    teacher: Optional[str] = None  # a checkpoint or run directory, a weight file, an ONNX model, or a .npy of features
    weight: float = MISSING


@dataclass
class MSEDistillConfig(DistillConfig):
    alpha: float = MISSING  # the mean squared difference of the normalised embeddings is multiplied by it


@dataclass
class KLDistillConfig(DistillConfig):
    temperature: float = MISSING  # softmax(logits / T) of both heads; the loss is multiplied by T^2


@dataclass
class RKDDistillConfig(DistillConfig):
    distance_weight: float = MISSING
    angle_weight: float = MISSING


@dataclass
class EKDDistillConfig(DistillConfig):
    """TFace's EKD (facetrain.distill.ekd); the defaults of configs/distill/ekd.yaml are TFace's."""

    fprs: list[float] = MISSING  # false positive rates of the anchors (thresholds among the sorted negatives)
    momentum: float = MISSING  # the anchors' EMA momentum
    temperature: float = MISSING  # of the soft rank counts' sigmoids
    top_k: int = MISSING  # negative pairs compared: the student's most similar ones
    positive_weight: float = MISSING
    negative_weight: float = MISSING


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
    "distill": {"base": DistillConfig, "mse": MSEDistillConfig, "kl": KLDistillConfig, "rkd": RKDDistillConfig,
                "ekd": EKDDistillConfig},
}

