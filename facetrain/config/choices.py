"""The choices a config key offers (enums), for the schemas of :mod:`facetrain.config.groups` and
:mod:`facetrain.config.schema`."""
from __future__ import annotations

from enum import Enum

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


class SamplerKind(Enum):
    random = "random"  # every image once per epoch, shuffled (the default)
    balanced = "balanced"  # P identities x trainer.images_per_identity images per batch
    mixed = "mixed"  # half random, half P x K (TFace's EKD batches)


class ElasticAssignment(Enum):
    paper = "paper"  # ElasticFace+: the sample closest to its centre gets the smallest margin
    official = "official"  # the official code's margin[argsort(cos)] indexing


