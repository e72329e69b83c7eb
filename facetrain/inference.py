"""Loading trained backbones for evaluation and export: the one way scripts get a model."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from facetrain.engine.checkpoint import BEST_NAME, CorruptCheckpointError, load_checkpoint, newest_checkpoint
from facetrain.engine.run_dir import CHECKPOINT_DIR
from facetrain.errors import ConfigError, ModelError
from facetrain.weights import build_loaded, recognise
from facetrain.weights.files import READ_AGAIN, SAFETENSORS, checkpoint_weights, file_format, read_weight_file


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
    """The eval-mode backbone of a checkpoint file (or a facetrain safetensors export), or of a run directory's
    newest checkpoint.

    Only the checkpoint's ``backbone`` and ``config`` are read (the file is memory-mapped), so a
    checkpoint of any head, sharded or not, written by any number of processes loads alike. The file's config
    is held to the command line's rules and its tensors compared with the network it names before that
    network is built (:mod:`facetrain.weights.network`): a small file cannot ask for a large model.
    """
    file = find_checkpoint(path)
    if file_format(file) == SAFETENSORS:
        weights = read_weight_file(file)
    else:
        try:
            content = load_checkpoint(file, mmap=True)
        except CorruptCheckpointError as exc:  # its fix speaks of resuming
            raise ModelError(exc.problem, READ_AGAIN) from None
        weights = checkpoint_weights(file, content)
    if weights.config is None:
        raise ModelError(f"{file} holds weights without a facetrain config",
                         f"import them first: python scripts/import_weights.py {file} --output model.pt")
    found = recognise(weights)
    backbone, _ = build_loaded(found, found.layout.backbone, found.layout.hparams, found.layout.embedding_size)
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
