"""Which images of a folder can be read: every file decoded once, in parallel processes, before training,
so that all unreadable files are named at once (not one per failed run), and remembered by size and
modification time so that the next start only decodes what changed."""
from __future__ import annotations

import hashlib
import json
import os
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

from facetrain.cores import capped_workers
from facetrain.data.images import decode_image
from facetrain.files import atomic_write
from facetrain.errors import DataError

SCAN_LIMIT = 100_000  # folders up to this many images are checked at start


def default_cache_dir() -> Path:
    """Where facetrain keeps what it generates or learns about data: ``$FACETRAIN_CACHE`` or ``~/.cache/facetrain``."""
    return Path(os.environ.get("FACETRAIN_CACHE", Path.home() / ".cache" / "facetrain"))


def _signature(path: str) -> str:
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _readable(path: str) -> bool:
    try:
        decode_image(Path(path).read_bytes(), path)
        return True
    except (DataError, OSError):
        return False


def unreadable_images(paths: Sequence[str], cache_name: str) -> list[str]:
    """The files of ``paths`` that cannot be read or decoded, in order. Results are cached in
    ``<cache dir>/image-checks/<cache_name digest>.json`` by each file's size and modification time."""
    cache = default_cache_dir() / "image-checks" / f"{hashlib.sha256(cache_name.encode()).hexdigest()[:16]}.json"
    known: dict[str, list] = json.loads(cache.read_text()) if cache.is_file() else {}
    signatures = {}
    for path in paths:
        try:
            signatures[path] = _signature(path)
        except OSError:
            signatures[path] = "missing"
    todo = [p for p in paths if signatures[p] == "missing" or known.get(p, [None])[0] != signatures[p]]
    if todo:
        workers = capped_workers(len(todo) // 64 + 1)
        if workers > 1:
            with get_context("fork").Pool(workers) as pool:
                results = pool.map(_readable, todo, chunksize=64)
        else:
            results = [_readable(p) for p in todo]
        known.update({p: [signatures[p], ok] for p, ok in zip(todo, results)})
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cache, "w") as f:
                json.dump({p: known[p] for p in paths}, f)
        except OSError:
            pass  # a read-only cache costs the next start a new scan, nothing else
    return [p for p in paths if not known[p][1]]
