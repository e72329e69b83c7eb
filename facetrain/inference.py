"""Loading trained backbones for evaluation and export."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from facetrain.backbones import build_backbone
from facetrain.engine.checkpoint import load_checkpoint
from facetrain.engine.resume import resume_checkpoint


def load_backbone(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """The eval-mode backbone of a checkpoint file, or of a run directory's newest checkpoint."""
    path = Path(path)
    state = load_checkpoint(resume_checkpoint(path) if path.is_dir() else path)
    config = state["config"]
    kwargs = {k: v for k, v in config["backbone"].items() if k != "name"}
    backbone = build_backbone(config["backbone"]["name"], config["embedding_size"], **kwargs)
    backbone.load_state_dict(state["backbone"])
    return backbone.to(device).eval()
