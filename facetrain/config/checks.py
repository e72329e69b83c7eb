"""The valid values of every config key, declared once per schema class and checked at start.

:data:`CHECKS` maps each schema dataclass of :mod:`facetrain.config` to a rule per field: a :class:`Check`
(what values are valid, an example, and optionally a warning for legal values outside what papers use) or
:data:`TYPED` where the field's type is the whole rule (booleans, enums, registry names checked when they
are built, free text). A test holds every field of every schema to having an entry, so a new key cannot be
added without deciding its range. :func:`check_config` walks a composed config, finds each node's schema
class, and raises a one-line ConfigError naming the key, the value, the valid values and an example.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from facetrain.config import choices, groups, schema
from facetrain.errors import ConfigError

log = logging.getLogger("facetrain")
_warned: set[str] = set()


@dataclass(frozen=True)
class Check:
    """``ok(value)`` says whether a value is valid; ``valid`` says which are, ``example`` is one. ``warn(value)``
    returns why a valid value is unusual (logged once), or None."""

    ok: Callable[[Any], bool]
    valid: str
    example: Any
    warn: Optional[Callable[[Any], Optional[str]]] = None
    bad: Any = None  # a value of the right type that the rule refuses (for the tests that try every key)


TYPED = None  # the field's type is its whole rule
WANDB_MODES = ("online", "offline", "disabled")  # logger.wandb.mode


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: float, example: Any, integer: bool = False) -> Check:
    kind = "an integer" if integer else "a number"
    return Check(lambda v: _number(v) and v >= low, f"{kind} >= {low:g}", example, bad=int(low) - 1 if integer else low - 1)


def above(low: float, example: Any, warn: Optional[Callable[[Any], Optional[str]]] = None) -> Check:
    return Check(lambda v: _number(v) and v > low, f"a number > {low:g}", example, warn, bad=low)


def between(low: float, high: float, example: Any, open_high: bool = False, open_low: bool = False,
            warn: Optional[Callable[[Any], Optional[str]]] = None) -> Check:
    def ok(v: Any) -> bool:
        return _number(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    return Check(ok, f"a number in {interval}", example, warn, bad=high + 1)


def optional(check: Check) -> Check:
    return Check(lambda v: v is None or check.ok(v), f"{check.valid}, or null", check.example, check.warn, check.bad)


def pair(low: float, high: float, example: list, integer: bool = False) -> Check:
    def ok(v: Any) -> bool:
        values = list(v) if v is not None and not isinstance(v, str) else []
        return len(values) == 2 and all(_number(x) and low <= x <= high for x in values) and values[0] <= values[1] \
            and (not integer or all(float(x).is_integer() for x in values))

    kind = "integers" if integer else "numbers"
    return Check(ok, f"two {kind} [low, high] with {low:g} <= low <= high <= {high:g}", example, bad=example[::-1])


def each(check: Check, example: list, length: Optional[int] = None) -> Check:
    def ok(v: Any) -> bool:
        values = list(v) if v is not None and not isinstance(v, str) else None
        return values is not None and (length is None or len(values) == length) and all(check.ok(x) for x in values)

    return Check(ok, f"a list of {length or 'any number of'} values, each {check.valid}", example,
                 bad=[check.bad] * (length or 1))


def _unusual_scale(s: float) -> Optional[str]:
    return None if 8 <= s <= 128 else "margin heads are trained with s between 16 and 64 in the literature"


def _unusual_margin(m: float) -> Optional[str]:
    return None if m <= 1.0 else "the papers use margins up to about 0.8; a larger one trains slowly if at all"


PROBABILITY = between(0.0, 1.0, 0.5)
DROPOUT = between(0.0, 1.0, 0.1, open_high=True)
SCALE = above(0.0, 64.0, _unusual_scale)
ANGLE = between(0.0, math.pi, 0.5, open_high=True, warn=_unusual_margin)
FILTER = between(0.0, 1.0, 0.4, open_high=True)  # a cosine; 0 = off (arcface_torch's interclass_filtering_threshold)

# blocks in a stage or a ViT: the deepest published face and ViT networks have up to 48; a bound keeps a file's
# config (facetrain.weights.network) from asking for millions of layers before its tensors are compared
MAX_BLOCKS = 256

NAME = Check(lambda v: isinstance(v, str) and v.strip() != "" and "/" not in v, "a non-empty name without '/'",
             "my_run", bad="a/b")

CHECKS: dict[type, dict[str, Optional[Check]]] = {
    schema.TrainConfig: {
        "name": NAME,
        "seed": at_least(0, 0, integer=True), "embedding_size": at_least(1, 512, integer=True),
        "resume": TYPED, "output_root": TYPED, "backbone": TYPED, "loss": TYPED, "head": TYPED, "init": TYPED,
        "finetune": TYPED, "dataset": TYPED, "optimizer": TYPED, "scheduler": TYPED, "trainer": TYPED,
        "checkpoint": TYPED, "eval": TYPED, "logger": TYPED, "sweep": TYPED, "distill": TYPED,
    },
    schema.TrainerConfig: {
        "max_steps": optional(at_least(1, 1000, integer=True)), "max_epochs": at_least(1, 20, integer=True),
        "batch_size": at_least(1, 128, integer=True), "precision": TYPED,
        "grad_clip": optional(above(0.0, 5.0)), "log_every": at_least(1, 50, integer=True), "device": TYPED,
        "num_workers": at_least(0, 8, integer=True), "hflip": PROBABILITY, "channels_last": TYPED,
        "cudnn_benchmark": TYPED, "fused_optimizer": TYPED, "reuse_cpu_memory": TYPED, "compile": TYPED,
        "compile_mode": Check(lambda v: v in choices.COMPILE_MODES, f"one of {', '.join(choices.COMPILE_MODES)}", "default",
                              bad="fastest"),
        "ddp_bucket_cap_mb": above(0.0, 25), "progress_bar": TYPED, "max_nonfinite": at_least(0, 5, integer=True),
        "grad_accum": at_least(1, 4, integer=True), "sync_bn": TYPED, "dist_timeout_s": above(0.0, 1800),
        "loss_scale_growth_interval": at_least(1, 100, integer=True), "sampler": TYPED,
        "images_per_identity": at_least(1, 4, integer=True),
    },
    schema.HeadConfig: {"parallel": TYPED, "sample_rate": between(0.0, 1.0, 0.1, open_low=True)},
    schema.InitConfig: {"backbone": TYPED, "strict": TYPED, "input_order": TYPED, "head": TYPED},
    schema.FinetuneConfig: {"backbone_lr_scale": at_least(0.0, 0.1), "frozen": TYPED,
                       "frozen_steps": optional(at_least(0, 100, integer=True)), "freeze_batch_norm": TYPED},
    schema.CheckpointConfig: {"every_steps": at_least(0, 1000, integer=True), "keep_last": at_least(0, 3, integer=True),
                         "save_best": TYPED, "best_metric": TYPED},
    schema.SweepConfig: {"name": optional(NAME), "objective": TYPED},  # objective: checked against the loaded eval targets
    schema.LoggerConfig: {"mlflow": TYPED, "wandb": TYPED},
    schema.MLflowConfig: {"enabled": TYPED, "tracking_uri": TYPED, "experiment": TYPED},
    schema.WandbConfig: {"enabled": TYPED, "project": TYPED, "entity": TYPED,
                    "mode": optional(Check(lambda v: v in WANDB_MODES, f"one of {', '.join(WANDB_MODES)}", "offline",
                                           bad="dry"))},
    schema.EvalConfig: {"every_steps": at_least(0, 2000, integer=True), "at_start": TYPED, "targets": TYPED,
                   "batch_size": at_least(1, 256, integer=True), "flip": TYPED},
    # ---- backbones
    groups.BackboneConfig: {"name": TYPED, "activation_checkpointing": TYPED},
    groups.IResNetConfig: {"dropout": DROPOUT, "zero_init_residual": TYPED},
    groups.MobileFaceNetConfig: {"blocks": each(between(1, MAX_BLOCKS, 2), [1, 4, 6, 2], length=4),
                            "scale": at_least(1, 2, integer=True)},
    groups.TorchvisionConfig: {"dropout": DROPOUT},
    groups.IRConfig: {"dropout": DROPOUT},
    groups.ViTConfig: {"image_size": at_least(1, 112, integer=True), "patch_size": at_least(1, 9, integer=True),
                  "embed_dim": at_least(1, 512, integer=True), "depth": between(1, MAX_BLOCKS, 12),
                  "num_heads": at_least(1, 8, integer=True), "mlp_ratio": above(0.0, 4.0),
                  "drop_path_rate": DROPOUT, "mask_ratio": DROPOUT},
    groups.TimmConfig: {"model": TYPED, "weights": TYPED, "dropout": DROPOUT},
    # ---- loss heads (and facetrain.heads.checks.check_margin: the target must be penalised)
    groups.LossConfig: {"name": TYPED},
    groups.SoftmaxConfig: {"bias": TYPED},
    groups.NormFaceConfig: {"s": SCALE},
    groups.CosFaceConfig: {"s": SCALE, "m": at_least(0.0, 0.4), "interclass_filtering_threshold": FILTER},
    groups.ArcFaceConfig: {"s": SCALE, "m": ANGLE, "variant": TYPED, "straight_through": TYPED,
                           "interclass_filtering_threshold": FILTER},
    groups.SubCenterArcFaceConfig: {"s": SCALE, "m": ANGLE, "k": at_least(1, 3, integer=True), "variant": TYPED,
                               "straight_through": TYPED, "interclass_filtering_threshold": FILTER},
    groups.CombinedMarginConfig: {"s": SCALE, "m1": above(0.0, 1.0), "m2": ANGLE, "m3": at_least(0.0, 0.2),
                             "straight_through": TYPED, "interclass_filtering_threshold": FILTER},
    groups.X2SoftmaxConfig: {"s": SCALE, "a": Check(lambda v: _number(v) and v < 0, "a negative number: the target must fall "
                                                                             "with the angle", -0.9, bad=0.9),
                        "h": between(0.0, math.pi, 0.0), "k": between(-1.0, 1.0, 0.65), "straight_through": TYPED},
    groups.AdaFaceConfig: {"s": SCALE, "m": ANGLE, "h": between(0.0, 1.0, 0.333), "t_alpha": between(0.0, 1.0, 0.01)},
    groups.MagFaceConfig: {"s": SCALE, "l_a": above(0.0, 10.0), "u_a": above(0.0, 110.0), "l_m": ANGLE, "u_m": ANGLE,
                      "lambda_g": at_least(0.0, 35.0), "variant": TYPED},
    groups.CurricularFaceConfig: {"s": SCALE, "m": ANGLE, "t_alpha": between(0.0, 1.0, 0.01)},
    groups.ElasticFaceConfig: {"s": SCALE, "m": optional(ANGLE), "sigma": optional(at_least(0.0, 0.05)), "kind": TYPED,
                          "plus": TYPED, "plus_assignment": TYPED},
    groups.CenterLossConfig: {"lambda_c": at_least(0.0, 0.003), "alpha": between(0.0, 1.0, 0.5, open_low=True),
                         "base": TYPED, "base_args": TYPED},
    groups.SphereFaceConfig: {"m": at_least(1, 4, integer=True), "base": above(0.0, 1000.0), "gamma": at_least(0.0, 0.12),
                         "power": at_least(0.0, 1.0), "lambda_min": at_least(0.0, 5.0)},
    # ---- data
    groups.DatasetConfig: {"name": TYPED, "root": TYPED, "num_classes": optional(at_least(2, 1000, integer=True)),
                      "val_targets": TYPED, "max_bad_fraction": PROBABILITY, "augment": TYPED,
                      "include": TYPED, "exclude": TYPED},
    groups.ImageFolderConfig: {"resize_unaligned": TYPED},
    groups.SyntheticConfig: {"images_per_class": at_least(2, 30, integer=True), "val_identities": at_least(2, 60, integer=True),
                        "val_images_per_identity": at_least(2, 5, integer=True),
                        "val_pairs": at_least(20, 1000, integer=True), "seed": at_least(0, 0, integer=True)},
    groups.AugmentConfig: {"seed": at_least(0, 0, integer=True), "random_resized_crop": PROBABILITY,
                      "crop_scale": pair(0.01, 1.0, [0.8, 1.0]), "color_jitter": PROBABILITY,
                      "jitter_strength": between(0.0, 1.0, 0.2), "grayscale": PROBABILITY, "blur": PROBABILITY,
                      "jpeg_compression": PROBABILITY, "jpeg_quality": pair(1, 100, [40, 95], integer=True),
                      "coarse_dropout": PROBABILITY, "dropout_size": pair(0.01, 1.0, [0.1, 0.3])},
    # ---- optimisation
    groups.OptimizerConfig: {"name": TYPED, "lr": above(0.0, 0.1), "weight_decay": at_least(0.0, 5e-4),
                        "reference_batch": optional(at_least(1, 1024, integer=True)), "no_decay_norm_bias": TYPED},
    groups.SGDConfig: {"momentum": between(0.0, 1.0, 0.9, open_high=True), "nesterov": TYPED},
    groups.AdamWConfig: {"betas": each(between(0.0, 1.0, 0.9, open_high=True), [0.9, 0.999], length=2),
                    "eps": above(0.0, 1e-8)},
    groups.SchedulerConfig: {"name": TYPED, "warmup_epochs": at_least(0.0, 1.0)},
    groups.PolyConfig: {"power": at_least(0.0, 2.0)},
    groups.MultiStepConfig: {"milestones": each(at_least(0.0, 10), [10, 16]), "gamma": between(0.0, 1.0, 0.1, open_low=True)},
    groups.CosineConfig: {"min_lr_ratio": between(0.0, 1.0, 0.0)},
    # ---- distillation (facetrain.distill builds the loss: its name is checked there)
    groups.DistillConfig: {"name": TYPED, "teacher": TYPED, "weight": at_least(0.0, 1.0)},
    groups.MSEDistillConfig: {"alpha": above(0.0, 1.0)},
    groups.KLDistillConfig: {"temperature": above(0.0, 4.0)},
    groups.RKDDistillConfig: {"distance_weight": at_least(0.0, 25.0), "angle_weight": at_least(0.0, 50.0)},
    groups.EKDDistillConfig: {"fprs": each(between(0.0, 1.0, 0.1, open_low=True), [0.1, 0.01]),
                              "momentum": between(0.0, 1.0, 0.01, open_low=True), "temperature": above(0.0, 0.01),
                              "top_k": at_least(1, 2000, integer=True), "positive_weight": at_least(0.0, 0.02),
                              "negative_weight": at_least(0.0, 0.01)},
}


def rules(schema: type) -> dict[str, Optional[Check]]:
    """The rule of every field of ``schema``, its base classes' included."""
    merged: dict[str, Optional[Check]] = {}
    for cls in reversed(schema.__mro__):
        merged.update(CHECKS.get(cls, {}))
    return merged


def _walk(node: DictConfig, prefix: str) -> None:
    schema = OmegaConf.get_type(node)
    checks = rules(schema) if isinstance(schema, type) else {}
    for key in node:
        path = f"{prefix}{key}"
        value = OmegaConf.select(node, str(key), throw_on_missing=False)
        if isinstance(value, DictConfig):
            _walk(value, f"{path}.")
            continue
        check = checks.get(str(key))
        if check is None:
            continue
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if not check.ok(plain):
            raise ConfigError(f"{path}={_show(plain)} is out of range ({check.valid})",
                              f"pass e.g. {path}={_show(check.example)}")
        reason = check.warn(plain) if check.warn is not None and plain is not None else None
        if reason and path not in _warned:
            _warned.add(path)
            log.warning(f"warning: {path}={_show(plain)} is legal but unusual: {reason}")


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value)



def _check_balanced_batch(trainer: DictConfig) -> None:
    """trainer.sampler=balanced needs a batch of whole identities; mixed, half a batch of them."""
    kind, size, k = trainer.sampler.value, trainer.batch_size, trainer.images_per_identity
    balanced = {"random": None, "balanced": size, "mixed": size - size // 2}[kind]
    if balanced is not None and balanced % k:
        part = "trainer.batch_size" if kind == "balanced" else "half of trainer.batch_size (rounded up)"
        raise ConfigError(f"trainer.sampler={kind} draws identities of trainer.images_per_identity={k} images, but "
                          f"{part} is {balanced}, not a multiple of {k}",
                          f"pass a trainer.batch_size that is a multiple of {k if kind == 'balanced' else 2 * k}")


def check_config(cfg: DictConfig) -> None:
    """Every key's range (:data:`CHECKS`), then the rules that span keys; a one-line ConfigError at the first
    problem, before any data is generated or a file written."""
    _walk(cfg, "")
    if cfg.distill.name != "none" and not cfg.distill.teacher:
        raise ConfigError(f"distill={cfg.distill.name} needs a teacher, but distill.teacher is not set",
                          "pass distill.teacher=<a checkpoint, run directory, weight file, ONNX model or .npy of features>")
    _check_balanced_batch(cfg.trainer)
    if cfg.optimizer.name == "sgd" and cfg.optimizer.nesterov and cfg.optimizer.momentum == 0:
        raise ConfigError("optimizer.nesterov=true needs momentum, but optimizer.momentum=0",
                          "pass optimizer.momentum=0.9, or optimizer.nesterov=false")
    if cfg.loss.name == "magface" and not (cfg.loss.l_a < cfg.loss.u_a and cfg.loss.l_m <= cfg.loss.u_m):
        raise ConfigError(f"loss.l_a={cfg.loss.l_a}, loss.u_a={cfg.loss.u_a}, loss.l_m={cfg.loss.l_m}, "
                          f"loss.u_m={cfg.loss.u_m}: MagFace needs l_a < u_a and l_m <= u_m",
                          "pass e.g. loss.l_a=10 loss.u_a=110 loss.l_m=0.45 loss.u_m=0.8")
    if cfg.scheduler.warmup_epochs >= cfg.trainer.max_epochs and cfg.trainer.max_steps is None:
        raise ConfigError(f"scheduler.warmup_epochs={cfg.scheduler.warmup_epochs} is not below "
                          f"trainer.max_epochs={cfg.trainer.max_epochs}: the rate would never leave its warm-up",
                          "pass fewer warm-up epochs (e.g. one tenth of the run)")
