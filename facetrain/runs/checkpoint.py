"""Checkpoint files: atomic writes with a sha256 sidecar, verified loads, the newest-valid lookup,
and rotation of old ones.

``checkpoints/step_000000040.pt`` is written to a temp file while its sha256 is computed, the digest
goes to ``step_000000040.pt.sha256`` (``sha256sum -c`` format), then the temp file is fsynced and
renamed. A file whose digest does not match its sidecar, or that torch cannot read, is corrupt.

A checkpoint holds only tensors and plain Python values (format 3: the numpy random state is stored as
a tensor), and is loaded with torch's ``weights_only`` loader: a file that would import anything else
(run code) is refused (:mod:`facetrain.untrusted`). Format 2 files hold the numpy random state as numpy's
own tuple: its array is read through checked stand-ins for numpy's globals, which accept exactly 624
uint32 words taken from the file's bytes, and nothing else.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from facetrain.files import atomic_write, file_sha256, remove_stale_temps
from facetrain.errors import FacetrainError, ResumeError
from facetrain.untrusted import FileArray, Refused, load_torch_file, numpy_array_globals

FORMAT_VERSION = 3
HOLDS = "a facetrain checkpoint holds only tensors and plain values"
BEST_NAME = "best.pt"
CHECKSUM_SUFFIX = ".sha256"
CORRUPT_SUFFIX = ".corrupt"
_NAME = re.compile(r"^step_(\d+)\.pt$")

log = logging.getLogger("facetrain")


class _RandomStateKeys(FileArray):
    """The one numpy array a format-2 checkpoint holds: the 624 uint32 words of numpy's legacy random state."""

    def check(self, array: np.ndarray) -> None:
        if array.dtype.kind != "u" or array.dtype.itemsize != 4 or array.shape != (624,):
            raise Refused(f"it holds a numpy array of shape {array.shape} {array.dtype} (a checkpoint's only "
                          "numpy array is its random state's 624 uint32 words)")


# what a format-2 checkpoint's numpy random state needs (numpy 1's and 2's names), bound to checked stand-ins
NUMPY_ARRAY_GLOBALS = [(stand_in, name) for name, stand_in in numpy_array_globals(_RandomStateKeys).items()]


class CheckpointError(FacetrainError):
    """A checkpoint could not be written."""


class CorruptCheckpointError(ResumeError):
    """A checkpoint fails its checksum or cannot be read."""


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:09d}.pt"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def list_checkpoints(directory: Path) -> list[Path]:
    """Step checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint(directory: Path) -> Optional[Path]:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


class _HashingWriter:
    """A write-only file wrapper that computes the sha256 of what passes through it."""

    def __init__(self, file: Any) -> None:
        self.file, self.sha256 = file, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically with its sha256 sidecar.

    Raises CheckpointError (one line: the file, the reason, the fix) if the disk is full or the
    folder is not writable; files written earlier are left as they were.
    """
    try:
        with atomic_write(path) as f:
            writer = _HashingWriter(f)
            torch.save({"format_version": FORMAT_VERSION, **state}, writer)
            with atomic_write(checksum_path(path), "w") as sidecar:
                sidecar.write(f"{writer.sha256.hexdigest()}  {path.name}\n")
    except OSError as exc:
        reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}.get(
                      exc.errno, exc.strerror or str(exc))
        raise CheckpointError(f"could not write checkpoint {path}: {reason}",
                              "free space or fix the folder's permissions (earlier checkpoints are intact), "
                              f"then continue with resume={path.parent.parent}") from None
    return path


def rotate_checkpoints(directory: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` step checkpoints (all when 0) and clear killed writes' temp files."""
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    remove_stale_temps(directory)


def verify_checksum(path: Path) -> None:
    """Raise CorruptCheckpointError if ``path`` does not match its sidecar (none: nothing to check)."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return
    recorded = sidecar.read_text().split()
    if file_sha256(path) != (recorded[0] if recorded else ""):
        raise CorruptCheckpointError(f"checkpoint {path} does not match its sha256 ({sidecar.name})",
                                     "it is truncated or corrupt; delete it to fall back to an older one")


def load_checkpoint(path: Path, mmap: bool = True) -> dict[str, Any]:
    """Verify and load a checkpoint on the CPU; a ResumeError names the file if it is corrupt or too new,
    an UnsafeFileError if it would run code.

    ``mmap`` (the default) maps the file instead of reading it: tensors the caller never touches (the
    head, for ``load_backbone``; other ranks' rows of a sharded head; the optimizer state) never take
    host memory.
    """
    verify_checksum(path)
    try:
        state = load_torch_file(path, HOLDS, NUMPY_ARRAY_GLOBALS, mmap=mmap)
    except FacetrainError:
        raise
    except Exception as exc:
        raise CorruptCheckpointError(f"checkpoint {path} is unreadable ({exc.__class__.__name__})",
                                     "it is truncated or corrupt; delete it to fall back to an older one") from None
    version = state.get("format_version", 0) if isinstance(state, dict) else 0
    if version > FORMAT_VERSION:
        raise ResumeError(f"checkpoint {path} has format version {version}, newer than this facetrain's {FORMAT_VERSION}",
                          "upgrade facetrain to resume it")
    return state


def load_newest_valid(directory: Path) -> tuple[Path, dict[str, Any]]:
    """The newest step checkpoint that verifies and loads; corrupt ones are reported and set aside
    as ``<name>.corrupt`` (a checkpoint from a newer facetrain is an error, not corruption)."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CorruptCheckpointError as exc:
            aside = path.with_name(path.name + CORRUPT_SUFFIX)
            path.replace(aside)
            log.warning(f"warning: {exc.problem}; moved it to {aside.name} and trying the previous checkpoint")
    raise ResumeError(f"{directory} holds no readable checkpoint", "start a fresh run (drop resume=...)")


def rng_state() -> dict[str, Any]:
    """Every random generator this process uses, as tensors and plain values."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (or a format-2 checkpoint's, whose numpy keys are an array)."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    shape = tuple(getattr(keys, "shape", ()))
    if shape != (624,):  # checked before converting: a tensor of any size can view a few bytes (zero strides)
        raise ResumeError(f"the checkpoint's numpy random state has keys of shape {shape}, not numpy's 624 words",
                          "resume from a checkpoint facetrain wrote; this one is corrupt or crafted")
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
