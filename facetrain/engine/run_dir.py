"""Where a run writes: one directory per run, agreed by all ranks, reused when resuming.

Registered as OmegaConf resolvers so that ``hydra.run.dir`` is the same on every rank (the
timestamp is decided once by rank 0 and shared through ``FACETRAIN_RUN_STAMP``).
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from facetrain.engine.distributed import broadcast_object, dist_info
from facetrain.errors import ResumeError

STAMP_ENV = "FACETRAIN_RUN_STAMP"
CHECKPOINT_DIR = "checkpoints"


def new_run_stamp() -> str:
    """``YYYY-MM-DD_HH-MM-SS_xxxx``: sortable by time, unique for runs started in the same second."""
    return time.strftime("%Y-%m-%d_%H-%M-%S") + "_" + secrets.token_hex(2)


def agree_on_run_stamp() -> str:
    """Rank 0 picks the stamp, every rank receives it, and it is exported for the resolvers."""
    stamp = os.environ.get(STAMP_ENV) or broadcast_object(new_run_stamp())
    os.environ[STAMP_ENV] = stamp
    return stamp


def has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / CHECKPOINT_DIR).glob("*.pt"))


def newest_run(output_root: str, name: str) -> Path:
    """The newest run directory of experiment ``name`` that holds a checkpoint."""
    runs = sorted(p for p in Path(output_root, name).glob("*") if p.is_dir() and has_checkpoints(p))
    if not runs:
        raise ResumeError(f"resume=auto found no run of '{name}' with a checkpoint under {output_root}/{name}",
                          "start a fresh run (drop resume=auto) or pass resume=<run_dir>")
    return runs[-1]


def resolve_run_dir(output_root: str, name: str, resume: Optional[str]) -> str:
    """The run directory: a new timestamped one, the newest run (``auto``), or the one given."""
    if resume is None:
        return str(Path(output_root, name, os.environ.get(STAMP_ENV) or new_run_stamp()))
    if resume == "auto":
        return str(newest_run(output_root, name))
    run_dir = Path(resume)
    if not run_dir.is_dir():
        raise ResumeError(f"resume={resume} is not a directory", "pass resume=<run_dir> of an earlier run, or resume=auto")
    if not has_checkpoints(run_dir):
        raise ResumeError(f"resume={resume} holds no checkpoint in {run_dir / CHECKPOINT_DIR}",
                          "resume from a run that saved one, or start a fresh run")
    return str(run_dir)


def hydra_subdir(resume: Optional[str]) -> Optional[str]:
    """Where Hydra saves the composed config: nowhere on ranks > 0; beside, not over, the original on resume."""
    if not dist_info().is_main:
        return None
    return ".hydra" if resume is None else f".hydra/resume_{os.environ.get(STAMP_ENV) or new_run_stamp()}"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("facetrain_run_dir", resolve_run_dir, replace=True)
    OmegaConf.register_new_resolver("facetrain_hydra_subdir", hydra_subdir, replace=True)
