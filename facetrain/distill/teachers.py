"""Frozen teachers from anywhere: a network (a facetrain checkpoint or run directory, any weight file
``scripts/import_weights.py`` reads, an ONNX recognition model) or precomputed features (a ``.npy`` with one row
per dataset index, written by ``scripts/extract_features.py --dataset``).

A teacher takes the student's batch as the student sees it (RGB ``[N,3,112,112]``, ``(x/255 - 0.5) / 0.5``,
augmented and flipped, channels_last when the student's is) with its labels and dataset indices, and returns its
raw embeddings (and its head's logits, when it brings a head). Each source converts to its own input convention
inside: weight files are converted to RGB on loading (:mod:`facetrain.weights`), ONNX models take their pixel
mean/std from the model (:mod:`facetrain.inference_onnx`). A teacher is frozen: eval mode, no parameter asks for a
gradient, every call runs under ``no_grad`` (inside the student's autocast); it is a plain object, so it is never a
submodule of the trained model, never under DDP and never in a checkpoint's model state.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from facetrain.errors import ConfigError, FacetrainError, ModelError
from facetrain.files import file_sha256
from facetrain.heads import Head, build_head
from facetrain.inference import load_backbone
from facetrain.inference_onnx import looks_like_onnx
from facetrain.runs.checkpoint import load_checkpoint
from facetrain.runs.run_dir import find_checkpoint
from facetrain.weights import build_loaded, read_layout

NPY_MAGIC = b"\x93NUMPY"
DEFAULT_EMBEDDING_SIZE = 512  # for weight files without an embedding layer, as import_weights.py assumes
SOURCES = "a facetrain checkpoint or run directory, a weight file import_weights.py reads, an ONNX model or a .npy of features"


@dataclass
class TeacherOutput:
    embeddings: torch.Tensor  # [N, D_t] raw, detached
    logits: Optional[torch.Tensor] = None  # [N, C] what the teacher head's cross-entropy sees


class Teacher(ABC):
    """A frozen teacher read from ``file``, which it names by path and sha256 (what a checkpoint records)."""

    def __init__(self, file: Path, embedding_size: int) -> None:
        self.file, self.embedding_size = file, embedding_size
        self.sha256 = file_sha256(file)

    @property
    def has_head(self) -> bool:
        return False

    @abstractmethod
    def outputs(self, images: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor]) -> TeacherOutput:
        """The teacher's view of the student's batch."""

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor]) -> TeacherOutput:
        return self.outputs(images, labels, indices)


class NetworkTeacher(Teacher):
    """A backbone (and optionally its head), frozen, run on the student's images on the student's device."""

    def __init__(self, file: Path, backbone: nn.Module, embedding_size: int, head: Optional[Head] = None) -> None:
        super().__init__(file, embedding_size)
        self.backbone, self.head = freeze(backbone), None if head is None else freeze(head)

    @property
    def has_head(self) -> bool:
        return self.head is not None

    def outputs(self, images: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor]) -> TeacherOutput:
        embeddings = self.backbone(images)
        logits = None if self.head is None else self.head(embeddings, labels).logits
        return TeacherOutput(embeddings, logits)


class FeatureTeacher(Teacher):
    """Precomputed features: row ``i`` of a memory-mapped ``[dataset size, D_t]`` array is the teacher's embedding
    of sample ``i``. The teacher saw the un-augmented image: the student's crop, colour and flip are not its."""

    def __init__(self, file: Path, features: np.ndarray) -> None:
        super().__init__(file, features.shape[1])
        self.features = features

    def outputs(self, images: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor]) -> TeacherOutput:
        if indices is None:
            raise ModelError(f"the precomputed teacher {self.file} needs each sample's dataset index",
                             "pass the indices of the batch (the trainer's loader yields them)")
        rows = np.asarray(self.features[indices.cpu().numpy()], dtype=np.float32)
        return TeacherOutput(torch.from_numpy(rows).to(images.device))


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with no parameter asking for a gradient."""
    return module.eval().requires_grad_(False)


def load_teacher(path: str | Path, device: torch.device, dataset_size: int, channels_last: bool = False,
                 head_classes: Optional[int] = None) -> Teacher:
    """The teacher in ``path`` on ``device``: a ``.npy`` of features (one row for each of the ``dataset_size``
    samples), an ONNX model, or a checkpoint / run directory / weight file (in channels_last when the student is).
    ``head_classes``: the teacher must bring a head for that many classes (a facetrain checkpoint's)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"distill.teacher={path} does not exist", f"pass {SOURCES}")
    file = find_checkpoint(path)
    with open(file, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        teacher: Teacher = FeatureTeacher(file, read_features(file, dataset_size))
    elif looks_like_onnx(file):
        backbone = load_backbone(file, device)
        teacher = NetworkTeacher(file, backbone, output_size(backbone, device))
    else:
        teacher = network_teacher(file, device, channels_last, head_classes)
    if head_classes is not None and not teacher.has_head:
        raise ConfigError(f"distill.teacher={path} has no head, and this loss compares the heads' logits",
                          "pass a facetrain checkpoint (it holds its head) trained on this dataset's classes")
    return teacher


def read_features(file: Path, dataset_size: int) -> np.ndarray:
    """The memory-mapped ``[dataset_size, D]`` float array in ``file`` (read as data: no pickled objects)."""
    try:
        features = np.load(file, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ModelError(f"distill.teacher={file} is not a readable .npy array ({str(exc).splitlines()[0]})",
                         "write it again with scripts/extract_features.py --dataset ... --output teacher.npy") from None
    if features.ndim != 2 or features.dtype.kind != "f" or len(features) != dataset_size:
        raise ModelError(f"distill.teacher={file} holds {features.dtype} {list(features.shape)}, not one float row for "
                         f"each of the dataset's {dataset_size} images",
                         "extract the features of this dataset: scripts/extract_features.py MODEL --dataset ROOT --output teacher.npy")
    return features


def network_teacher(file: Path, device: torch.device, channels_last: bool, head_classes: Optional[int]) -> NetworkTeacher:
    """A checkpoint's or weight file's backbone converted to facetrain's input (RGB), and its head when asked."""
    found, problem = None, ""
    try:
        found = read_layout(file)
    except FacetrainError as exc:
        problem = exc.problem
    if found is None:  # raised here, not in the handler: the one-line report names the outermost error
        raise ModelError(f"distill.teacher={file}: {problem}", f"pass {SOURCES}")
    layout = found.layout
    size = layout.embedding_size or DEFAULT_EMBEDDING_SIZE
    backbone, _ = build_loaded(found, layout.backbone, layout.hparams, size)
    backbone = backbone.to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    head = None if head_classes is None or found.file.config is None else checkpoint_head(file, size, head_classes, device)
    return NetworkTeacher(file, backbone, size, head)


def checkpoint_head(file: Path, embedding_size: int, classes: int, device: torch.device) -> Optional[Head]:
    """The head a facetrain checkpoint holds (None for an export without one), for ``classes`` classes."""
    content = load_checkpoint(file, mmap=True)
    if "head" not in content or "loss" not in content.get("config", {}):
        return None
    saved = content.get("data", {}).get("classes")
    if saved != classes:
        raise ConfigError(f"distill.teacher={file} has a head for {saved} classes, the dataset has {classes}",
                          "distil from a teacher trained on this dataset, or use distill=feature")
    loss = dict(content["config"]["loss"])
    head = build_head(loss.pop("name"), embedding_size, classes, **loss)
    head.load_state_dict(content["head"])
    return head.to(device)


def output_size(backbone: nn.Module, device: torch.device) -> int:
    """The embedding size of ``backbone`` (one forward of a blank image)."""
    with torch.no_grad():
        return backbone(torch.zeros(1, 3, 112, 112, device=device)).shape[1]
