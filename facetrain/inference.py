"""Loading trained backbones for evaluation and export: the one way scripts get a model."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from facetrain.backbones import build_backbone
from facetrain.engine.checkpoint import BEST_NAME, load_checkpoint, newest_checkpoint
from facetrain.engine.run_dir import CHECKPOINT_DIR
from facetrain.errors import ConfigError, ModelError


def find_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it is a file; for a run directory (or its ``checkpoints/``) the newest step
    checkpoint, else ``best.pt``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelError(f"{path} does not exist", "pass a checkpoint file (.pt) or a run directory")
    for folder in (path / CHECKPOINT_DIR, path):
        found = newest_checkpoint(folder)
        if found is None and (folder / BEST_NAME).is_file():
            found = folder / BEST_NAME
        if found is not None:
            return found
    raise ModelError(f"{path} holds no checkpoint ({CHECKPOINT_DIR}/step_*.pt or {BEST_NAME})",
                     "pass the run directory of a run that saved one, or a checkpoint file")


def load_backbone(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """The eval-mode backbone of a checkpoint file, or of a run directory's newest checkpoint.

    Only the checkpoint's ``backbone`` and ``config`` are read (the file is memory-mapped), so a
    checkpoint of any head, sharded or not, written by any number of processes loads alike.
    """
    file = find_checkpoint(path)
    state = load_checkpoint(file, mmap=True)
    if not isinstance(state, dict) or "backbone" not in state or "config" not in state:
        raise ModelError(f"{file} is not a facetrain checkpoint (it has no 'backbone' and 'config')",
                         "pass a checkpoint written by train.py")
    config = state["config"]
    hparams = {k: v for k, v in config["backbone"].items() if k != "name"}
    backbone = build_backbone(config["backbone"]["name"], config["embedding_size"], **hparams)
    try:
        backbone.load_state_dict(state["backbone"])
    except RuntimeError as exc:
        raise ModelError(f"{file}: the backbone weights do not fit {config['backbone']['name']} "
                         f"({str(exc).strip().splitlines()[0]})", "the checkpoint is damaged or was edited") from None
    return backbone.to(device).eval()


def resolve_device(kind: str) -> torch.device:
    """``auto`` (a CUDA GPU when one is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(kind)
    except RuntimeError:
        raise ConfigError(f"unknown device '{kind}'", "pass --device auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {kind} but no CUDA GPU is visible", "pass --device cpu (or auto)")
    return device
