"""Resuming: the newest valid checkpoint, the saved config plus this command's overrides, and
refusal of anything that would change what is trained."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from facetrain.config import IDENTITY_KEYS, TrainConfig
from facetrain.runs.checkpoint import load_checkpoint, load_newest_valid, newest_checkpoint
from facetrain.parallel.groups import broadcast_object, dist_info
from facetrain.runs.run_dir import CHECKPOINT_DIR
from facetrain.errors import FacetrainError, ResumeError

log = logging.getLogger("facetrain")

_NOT_CARRIED = ("resume", "hydra")
_ABSENT = object()


def override_keys(overrides: list[str]) -> list[str]:
    """Dotted keys named by Hydra command-line overrides (``a.b=1``, ``+a=1``, ``loss=cosface``)."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        key = key.split("@", 1)[0]
        if key.split(".", 1)[0] not in _NOT_CARRIED and not key.startswith("hydra/"):
            keys.append(key)
    return keys


def merge_resume_config(current: DictConfig, overrides: list[str], saved: dict[str, Any]) -> DictConfig:
    """``saved`` with the keys overridden on this command line taken from ``current``.

    Raises ResumeError naming the keys if that would change backbone, head, embedding size,
    dataset, num_classes or optimizer.
    """
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    original = OmegaConf.create(saved)
    for key in override_keys(overrides):
        value = OmegaConf.select(current, key, default=_ABSENT)
        if value is not _ABSENT:  # group choices with no key of their own (experiment=...) are already in ``saved``
            OmegaConf.update(merged, key, value, merge=False)
    changed = [
        key for key in IDENTITY_KEYS
        if OmegaConf.select(merged, key, default=None) != OmegaConf.select(original, key, default=None)
    ]
    if changed:
        raise ResumeError(f"cannot resume with a different {', '.join(changed)} than the run was started with",
                          "drop those overrides, or start a fresh run")
    merged.resume = current.resume
    return merged


def resume_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of ``run_dir``."""
    path = newest_checkpoint(run_dir / CHECKPOINT_DIR)
    if path is None:
        raise ResumeError(f"{run_dir} holds no checkpoint", "resume a run that saved one, or start a fresh run")
    return path


def load_resume_state(run_dir: Path) -> dict[str, Any]:
    """The newest checkpoint of ``run_dir`` that verifies: rank 0 finds it (reporting and setting
    aside corrupt ones), every other rank loads the same file."""
    found: Any = None
    state: dict[str, Any] = {}
    if dist_info().is_main:
        try:
            path, state = load_newest_valid(run_dir / CHECKPOINT_DIR)
            found = path
        except FacetrainError as exc:  # every rank raises it (a corrupt, too new or refused checkpoint)
            found = exc
    found = broadcast_object(found)
    if isinstance(found, FacetrainError):
        raise found
    return state if dist_info().is_main else load_checkpoint(found)


def check_same_data(state: dict[str, Any], images: int, classes: int) -> None:
    """Refuse to continue a run on a dataset of another size or class count (a moved root is fine)."""
    saved = state.get("data")
    if saved is None:
        return
    changed = [f"{key} ({saved[key]} then, {now} now)" for key, now in (("images", images), ("classes", classes))
               if saved[key] != now]
    if changed:
        raise ResumeError(f"cannot resume on a different dataset: number of {' and '.join(changed)}",
                          "point dataset.root at the data the run was started with, or start a fresh run")


def re_express_step(step: int, saved_batch: int, step_batch: int, images: int) -> int:
    """The optimizer step of ``step_batch`` images that stands where ``step`` steps of ``saved_batch`` images
    stood in the data: the same epoch and image of it, rounded down to a whole new step (a position past the
    epoch's last whole new step is the start of the next epoch). ``images``: the dataset's size.

    The one rule for everything counted in steps when a resume changes the global batch: the step counter,
    the schedule's position, a ``trainer.max_steps`` budget (so the run ends where it would have, the same
    epoch position; its images differ by what each epoch's last partial step drops) and heads' step counts.
    """
    saved_per_epoch, per_epoch = images // saved_batch, images // step_batch
    epoch, steps_into_epoch = divmod(step, saved_per_epoch)
    return epoch * per_epoch + min(steps_into_epoch * saved_batch // step_batch, per_epoch)


def rescale_max_steps(cfg: DictConfig, overrides: list[str], state: dict[str, Any], step_batch: int, images: int) -> None:
    """Re-express a saved ``trainer.max_steps`` in steps of this run's global batch (``step_batch`` images) on
    ``images`` images by :func:`re_express_step`, so a run resumed with another batch ends at the same
    place in the data. A ``trainer.max_steps`` on this command line is taken as given, in the new steps (as
    is any when the new batch exceeds the dataset, which building the trainer refuses)."""
    saved_batch = state.get("global_batch", step_batch)
    if (cfg.trainer.max_steps is None or saved_batch == step_batch or images < step_batch
            or "trainer.max_steps" in override_keys(overrides)):
        return
    rescaled = max(1, re_express_step(cfg.trainer.max_steps, saved_batch, step_batch, images))
    log.info(f"resume: trainer.max_steps {cfg.trainer.max_steps} of {saved_batch} images -> {rescaled} of {step_batch} "
             f"(the same end in the data: epoch {rescaled // (images // step_batch)} + "
             f"{rescaled % (images // step_batch) * step_batch} images)")
    cfg.trainer.max_steps = rescaled
