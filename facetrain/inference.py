"""Loading trained backbones for evaluation and export: the one way scripts get a model."""
from __future__ import annotations

import os

import torch
from torch import nn

from facetrain.errors import ConfigError, ModelError
from facetrain.inference_onnx import load_onnx_backbone, looks_like_onnx
from facetrain.runs.checkpoint import CorruptCheckpointError, load_checkpoint
from facetrain.runs.run_dir import find_checkpoint
from facetrain.weights import build_loaded, recognise
from facetrain.weights.files import READ_AGAIN, SAFETENSORS, checkpoint_weights, file_format, read_weight_file


def load_backbone(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """The eval-mode backbone of a checkpoint file (or a facetrain safetensors export), or of a run directory's
    newest checkpoint; or an ONNX recognition model (insightface's model packs, facetrain's exports) run by
    onnxruntime behind the same interface (:mod:`facetrain.inference_onnx`).

    Only the checkpoint's ``backbone`` and ``config`` are read (the file is memory-mapped), so a
    checkpoint of any head, sharded or not, written by any number of processes loads alike. The file's config
    is held to the command line's rules and its tensors compared with the network it names before that
    network is built (:mod:`facetrain.weights.network`): a small file cannot ask for a large model.
    """
    file = find_checkpoint(path)
    if looks_like_onnx(file):
        return load_onnx_backbone(file, device)
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
