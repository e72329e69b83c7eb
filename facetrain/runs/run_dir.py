"""Where a run writes: one directory per run, agreed by all ranks, reused when resuming; a sweep's jobs
in ``<output_root>/multirun/<sweep name or start time>/<name>_<overrides>/``.

Registered as OmegaConf resolvers so that ``hydra.run.dir`` and ``hydra.sweep.dir`` are the same on every
rank (the timestamp is decided once by rank 0 and shared through ``FACETRAIN_RUN_STAMP``).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from facetrain.runs.checkpoint import BEST_NAME, list_checkpoints, newest_checkpoint
from facetrain.parallel.groups import broadcast_object
from facetrain.errors import ConfigError, ModelError, ResumeError

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
    """Whether ``run_dir`` holds a step checkpoint to resume from (``best.pt`` alone is not one)."""
    return bool(list_checkpoints(run_dir / CHECKPOINT_DIR))


def resumable_runs(output_root: str, name: str) -> list[Path]:
    """The run directories named ``name`` that hold a checkpoint, oldest first (their names start with the time)."""
    return sorted(p for p in Path(output_root, name).glob("*") if p.is_dir() and has_checkpoints(p))


def newest_run(output_root: str, name: str) -> Optional[Path]:
    """The newest run directory of experiment ``name`` that holds a checkpoint, if any."""
    runs = resumable_runs(output_root, name)
    return runs[-1] if runs else None


def auto_resume_note(output_root: str, name: str, run_dir: Path, step: int) -> str:
    """What ``resume=auto`` continues and why, for train.log and the console."""
    count = len(resumable_runs(output_root, name))
    return (f"resume=auto: continuing {run_dir} at step {step} (the newest of {count} run{'s' if count > 1 else ''} "
            f"named '{name}' with a checkpoint in {Path(output_root, name)}; pass resume=<run_dir> for another)")


def fresh_run_dir(output_root: str, name: str) -> str:
    return str(Path(output_root, name, os.environ.get(STAMP_ENV) or new_run_stamp()))


def resolve_run_dir(output_root: str, name: str, resume: Optional[str]) -> str:
    """The run directory: a new timestamped one, the newest run of ``name`` (``auto``; a new one if
    there is none yet, so a job script can always pass resume=auto), or the one given."""
    if resume is None:
        return fresh_run_dir(output_root, name)
    if resume == "auto":
        newest = newest_run(output_root, name)
        return str(newest) if newest is not None else fresh_run_dir(output_root, name)
    run_dir = Path(resume)
    if not run_dir.is_dir():
        raise ResumeError(f"resume={resume} is not a directory", "pass resume=<run_dir> of an earlier run, or resume=auto")
    if not has_checkpoints(run_dir):
        raise ResumeError(f"resume={resume} holds no checkpoint in {run_dir / CHECKPOINT_DIR}",
                          "resume from a run that saved one, or start a fresh run")
    return str(run_dir)


def sweep_dir(output_root: str, sweep_name: Optional[str]) -> str:
    """A sweep's directory: ``<output_root>/multirun/<sweep.name>``, or the start time's stamp without a name."""
    if sweep_name is not None and (not sweep_name.strip() or "/" in sweep_name):
        raise ConfigError(f"sweep.name={sweep_name} is not a folder name", "pass e.g. sweep.name=heads")
    return str(Path(output_root, "multirun", sweep_name or os.environ.get(STAMP_ENV) or new_run_stamp()))


MAX_NAME_BYTES = 255  # a file name's limit on Linux, macOS and Windows file systems


def job_dirname(name: str, override_dirname: str) -> str:
    """A sweep job's directory name: the run's name and its overrides (``/`` in a value kept out of the path).
    A name past the file system's 255 bytes keeps its start and ends in a hash of the whole name, so the same
    job (a sweep run again, a re-queued job) finds the same directory and two jobs never share one."""
    dirname = f"{name}_{override_dirname}".rstrip("_").replace("/", "_")
    encoded = dirname.encode()
    if len(encoded) <= MAX_NAME_BYTES:
        return dirname
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    start = encoded[:MAX_NAME_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{start}_{digest}"


def launch_rank() -> int:
    """This process's rank as its launcher numbers it (torchrun, srun, submitit), before any process group."""
    for variable in ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"):
        if variable in os.environ:
            return int(os.environ[variable])
    return 0


def hydra_subdir(run_dir: str) -> Optional[str]:
    """Where Hydra saves the composed config: nowhere on ranks > 0; ``.hydra`` in a new run, beside
    (not over) the original when continuing one."""
    if launch_rank() != 0:
        return None
    if not Path(run_dir, ".hydra", "config.yaml").is_file():
        return ".hydra"
    return f".hydra/resume_{os.environ.get(STAMP_ENV) or new_run_stamp()}"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("facetrain_run_dir", resolve_run_dir, replace=True)
    OmegaConf.register_new_resolver("facetrain_hydra_subdir", hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("facetrain_sweep_dir", sweep_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("facetrain_job_dirname", job_dirname, replace=True)
    OmegaConf.register_new_resolver("facetrain_tasks_per_node", lambda gpus: gpus or 1, replace=True)

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
