"""Reading weight files as data: facetrain checkpoints and run directories, arcface_torch's ``backbone.pth``,
AdaFace's Lightning ``.ckpt``, torchvision's ImageNet files and ``.safetensors``; never running their code."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from facetrain.errors import ModelError
from facetrain.untrusted import load_torch_file

HOLDS = "a weight file holds only tensors and plain values"
METADATA_KEY = "facetrain"  # safetensors metadata: the backbone config of a facetrain export


# The globals a Lightning checkpoint's hyperparameters may name (its AttributeDict, read as the plain dict it
# subclasses; argparse's Namespace, an attribute bag): a file is read with exactly these allowed, never with
# full pickle, and Lightning need not be installed.
LIGHTNING_GLOBALS = [(dict, name) for name in (
    "pytorch_lightning.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict")] + [argparse.Namespace]


@dataclass
class WeightFile:
    """The tensors of a file, and what it says about itself: a facetrain ``config`` (checkpoints and
    facetrain exports), whether it came wrapped in a Lightning checkpoint."""

    path: Path
    state: dict[str, torch.Tensor]
    config: Optional[dict[str, Any]] = None
    lightning: bool = False
    channel_order: Optional[str] = None


def read_weight_file(path: Path) -> WeightFile:
    """The weights in ``path`` (a file, or a facetrain run directory: its newest checkpoint)."""
    from facetrain.inference import find_checkpoint

    path = find_checkpoint(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        content = load_torch_file(path, HOLDS, LIGHTNING_GLOBALS, mmap=False)
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                         "the file is truncated or not a torch file; download or copy it again") from None
    if isinstance(content, dict) and "backbone" in content and "config" in content:
        return WeightFile(path, content["backbone"], content["config"],
                          channel_order=content.get("input", {}).get("channel_order"))
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):  # Lightning: the model's part
        state = {key: value for key, value in content["state_dict"].items() if key.startswith("model.")}
        return WeightFile(path, state or content["state_dict"], lightning=True)
    if not isinstance(content, dict) or not content or not all(torch.is_tensor(v) for v in content.values()):
        kind = type(content).__name__ if not isinstance(content, dict) else "dict of non-tensors"
        raise ModelError(f"{path} is not a state dict (it holds a {kind})",
                         "pass a backbone's state dict, a Lightning checkpoint or a facetrain checkpoint")
    return WeightFile(path, content)


def _read_safetensors(path: Path) -> WeightFile:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path} is unreadable ({exc})", "the file is truncated or not a safetensors file") from None
    info = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    return WeightFile(path, state, info.get("config"), channel_order=info.get("channel_order"))


def write_safetensors(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any], channel_order: str) -> Path:
    """``state`` as a safetensors file whose metadata names the facetrain backbone config (a file that can
    hold no code, which facetrain and any safetensors reader load)."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    info = json.dumps({"config": config, "channel_order": channel_order})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: info})
    return path
