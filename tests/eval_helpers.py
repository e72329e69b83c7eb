"""Helpers of the evaluation tests: small checkpoints as train.py writes them, and the scripts as modules."""
from __future__ import annotations

import copy
import importlib.util
import random
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

import numpy as np
import torch

from facetrain.backbones import build_backbone
from facetrain.data.transforms import normalize
from facetrain.runs.checkpoint import load_checkpoint, save_checkpoint

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY_MBF = {"name": "mbf", "blocks": [1, 1, 1, 1], "scale": 1}


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as module ``name`` (DataLoader workers can find it)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def write_checkpoint(path: Path, backbone_config: dict[str, Any] = TINY_MBF, embedding_size: int = 32, seed: int = 0,
                     calibrate: Optional[np.ndarray] = None, **extra: Any) -> torch.nn.Module:
    """A checkpoint in the layout of the trainer's (``backbone``, ``config`` and whatever ``extra``
    holds: a head, the world size) with a freshly initialised backbone; returns it in eval mode.

    BN statistics are those of ``calibrate`` (uint8 images ``[N,112,112,3]``) if given, as training
    would set them, so that embeddings of different faces are not all alike; else random."""
    torch.manual_seed(seed)
    hparams = {k: v for k, v in backbone_config.items() if k != "name"}
    backbone = build_backbone(backbone_config["name"], embedding_size, **hparams)
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.running_mean.uniform_(-0.1, 0.1)
        module.running_var.uniform_(0.5, 1.5)
    if calibrate is not None:
        for module in norms:
            module.reset_running_stats()
            module.momentum = None  # a cumulative average
        with torch.no_grad():
            backbone.train()(normalize(torch.from_numpy(calibrate).permute(0, 3, 1, 2)))
    config = {"backbone": dict(backbone_config), "embedding_size": embedding_size, "loss": {"name": "arcface"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"backbone": backbone.state_dict(), "config": config, **extra}, path)
    return backbone.eval()


def edited_checkpoint(base: Path, path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """``base`` (a checkpoint as train.py writes it) with ``edit`` applied to its state, written as facetrain
    writes checkpoints (with a matching sha256 sidecar: the file is consistent, only its content is crafted)."""
    state = copy.deepcopy(load_checkpoint(base, mmap=False))
    state.pop("format_version")
    edit(state)
    return save_checkpoint(state, path)


def set_config(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit for :func:`edited_checkpoint`: ``config[keys[0]][keys[1]]... = value``."""
    def edit(state: dict[str, Any]) -> None:
        node = state["config"]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


def not_weight_files(folder: Path, checkpoint: Path) -> dict[str, tuple[Path, str]]:
    """Files that are no weight file (random bytes, text, empty, a zip of something else, half of ``checkpoint``),
    each with what its refusal says."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "random.pt").write_bytes(random.Random(0).randbytes(2000))
    (folder / "text.pt").write_text("this is not a model\n")
    (folder / "empty.pt").write_bytes(b"")
    with zipfile.ZipFile(folder / "other.zip", "w") as archive:
        archive.writestr("notes.txt", "a zip, not torch")
    (folder / "truncated.pt").write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    neither = "is neither a torch file nor a safetensors file"
    return {"random": (folder / "random.pt", f"{neither} (it starts with b'"),
            "text": (folder / "text.pt", f"{neither} (it starts with b'this is"),
            "empty": (folder / "empty.pt", f"{neither} (it is empty)"),
            "zip": (folder / "other.zip", "is unreadable (RuntimeError"),
            "truncated": (folder / "truncated.pt", "is unreadable")}
