"""Features computed once per (checkpoint, image list, settings) and kept beside the results, so that scoring
another protocol on the same images (1:1 then 1:N, another gallery) costs no second pass of the network."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from facetrain.files import atomic_write
from facetrain.files import file_sha256
from facetrain.runs.checkpoint import checksum_path

log = logging.getLogger("facetrain")


def checkpoint_digest(path: Path) -> str:
    """The sha256 of a checkpoint (read from its ``.sha256`` sidecar when it has one)."""
    sidecar = checksum_path(path)
    if sidecar.is_file() and sidecar.read_text().split():
        return sidecar.read_text().split()[0]
    return file_sha256(path)


def file_list_digest(base: Path, names: Sequence[str]) -> str:
    """A digest of an ordered list of files (the images a feature matrix has rows for): each name with its
    size and modification time, so that a replaced image invalidates the features."""
    digest = hashlib.sha256()
    for name in names:
        try:
            stat = (base / name).stat()
            digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:  # the feature pass names the missing file
            digest.update(f"{name}\tmissing\n".encode())
    return digest.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """The sha256 of an array's values, dtype and shape (inputs such as landmarks, keyed by content)."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()


def cached_features(folder: Optional[Path], key: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``'s features, or the ones an earlier call with the same ``key`` saved in ``folder``
    (``features_<digest of key>.npy``, plain arrays: loading one runs no code); no cache when ``folder`` is None."""
    if folder is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"features_{digest}.npy"
    if path.is_file():
        log.info(f"reusing the features in {path}")
        return np.load(path, allow_pickle=False)
    features = compute()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.save(f, features, allow_pickle=False)
    path.with_suffix(".json").write_text(json.dumps(key, indent=2) + "\n")
    return features
