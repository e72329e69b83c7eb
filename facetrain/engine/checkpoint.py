"""Checkpoint files: atomic writes, the newest-valid lookup, and rotation of old ones."""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from facetrain.errors import ResumeError

FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, keep_last: int) -> Path:
    """Write ``state`` atomically (temp file, fsync, rename), then keep only the newest ``keep_last``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; a ResumeError names the file if it is unreadable or too new."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ResumeError(f"checkpoint {path} is unreadable ({exc.__class__.__name__})",
                          "it is truncated or corrupt; delete it to fall back to an older one") from None
    version = state.get("format_version", 0) if isinstance(state, dict) else 0
    if version > FORMAT_VERSION:
        raise ResumeError(f"checkpoint {path} has format version {version}, newer than this facetrain's {FORMAT_VERSION}",
                          "upgrade facetrain to resume it")
    return state


def newest_checkpoint(directory: Path) -> Optional[Path]:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def rng_state() -> dict[str, Any]:
    """Every random generator this process uses."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
