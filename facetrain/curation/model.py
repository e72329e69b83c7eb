"""The model a cleaning uses: its backbone, the file's sha256 and, for a sub-center ArcFace checkpoint, its
class sub-centres (the head's ``weight`` ``[C*K, d]``, class-major)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from facetrain.errors import ModelError
from facetrain.eval.feature_cache import checkpoint_digest
from facetrain.inference import load_backbone
from facetrain.runs.checkpoint import load_checkpoint
from facetrain.runs.run_dir import find_checkpoint
from facetrain.weights.files import SAFETENSORS, file_format


@dataclass
class CleaningModel:
    path: Path
    sha256: str
    backbone: nn.Module
    subcentres: Optional[np.ndarray]  # [C, K, d] when the checkpoint's head is sub-center ArcFace


def head_subcentres(path: Path) -> Optional[np.ndarray]:
    """The sub-centres ``[C, K, d]`` of a facetrain checkpoint trained with ``loss=subcenter_arcface``, else None."""
    if file_format(path) == SAFETENSORS:
        return None
    state = load_checkpoint(path, mmap=True)
    loss = (state.get("config") or {}).get("loss") or {}
    if loss.get("name") != "subcenter_arcface" or "weight" not in (state.get("head") or {}):
        return None
    weight = state["head"]["weight"].float().numpy()
    k = int(loss.get("k", 3))
    return weight.reshape(-1, k, weight.shape[1])


def load_cleaning_model(path: Path, device: torch.device) -> CleaningModel:
    """The model at ``path`` (anything ``load_backbone`` reads)."""
    file = find_checkpoint(path)
    backbone = load_backbone(file, device)
    return CleaningModel(file, checkpoint_digest(file), backbone, head_subcentres(file))


def check_subcentres(model: CleaningModel, num_classes: int) -> None:
    """A sub-center head must have one row of centres per class of the dataset."""
    if model.subcentres is not None and len(model.subcentres) != num_classes:
        raise ModelError(f"{model.path} is a sub-center ArcFace checkpoint of {len(model.subcentres)} classes, the "
                         f"dataset has {num_classes}", "pass the checkpoint trained on this dataset, or --no-subcentres "
                         "to use each identity's mean embedding")
