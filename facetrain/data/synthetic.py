"""The synthetic identities dataset: generated once into a cache folder in insightface's layout.

``train.rec``/``train.idx``/``property`` hold ``num_classes`` identities; ``synthetic_val.bin`` holds
verification pairs of other, disjoint identities. Everything is deterministic in ``seed``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from facetrain.cores import usable_cores
from facetrain.data.images import encode_jpeg
from facetrain.data.readability import default_cache_dir
from facetrain.data.recordio import write_insightface_folder
from facetrain.data.synthetic_faces import render_face, sample_identity
from facetrain.data.verification_bin import save_verification_bin
from facetrain.errors import ConfigError

VAL_TARGET = "synthetic_val"
_TRAIN, _VAL = 0, 1  # stream ids: train and validation identities never share a random stream
GENERATOR_VERSION = 2  # bump when the rendering changes, so cached copies of older images are not reused


@dataclass(frozen=True)
class SyntheticSpec:
    num_classes: int
    images_per_class: int
    val_identities: int
    val_images_per_identity: int
    val_pairs: int
    seed: int

    def digest(self) -> str:
        key = {**asdict(self), "generator": GENERATOR_VERSION}
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def synthetic_root(spec: SyntheticSpec, root: Optional[str] = None) -> Path:
    """Where the dataset of ``spec`` lives: ``root`` if given, else a cache folder named by its digest."""
    return Path(root) if root else default_cache_dir() / f"synthetic-{spec.digest()}"


def check_root(spec: SyntheticSpec, root: Optional[str]) -> None:
    """A one-line ConfigError when ``root`` (``dataset.root``) names something other than this dataset: the
    synthetic data is generated into it, so it must be new, an empty folder, or this dataset already generated."""
    path = Path(root) if root else None
    if path is None or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    saved = path / "spec.json"
    if saved.is_file():
        try:
            settings = json.loads(saved.read_text())
        except ValueError:
            settings = None
        wanted = asdict(spec)
        if settings == wanted:
            return
        if isinstance(settings, dict):
            differ = ", ".join(f"{key} {settings.get(key)} there, {value} here" for key, value in wanted.items()
                               if settings.get(key) != value)
            raise ConfigError(f"dataset.root={root} holds synthetic data of other settings ({differ})",
                              "leave dataset.root unset (each setting gets a cache folder of its own) or pass a new folder")
    raise ConfigError(f"dataset.root={root} already holds other files, but dataset=synthetic generates its images "
                      "into dataset.root", "leave dataset.root unset for the synthetic data, and name a .bin of yours "
                      f"by its path: eval.targets=[{path / '<name>.bin'}]")


def render_identity(seed: int, stream: int, identity: int, count: int) -> list[bytes]:
    """``count`` JPEG images of one identity, deterministic in ``(seed, stream, identity)``."""
    rng = np.random.default_rng([seed, stream, identity])
    person = sample_identity(rng)
    return [encode_jpeg(render_face(person, rng), quality=90) for _ in range(count)]


def sample_pairs(rng: np.random.Generator, identities: int, per_identity: int, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pair image indices [P,2], issame [P])`` in blocks of ten folds, half genuine, half impostor."""
    index_pairs, issame = [], []
    for fold_size in map(len, np.array_split(np.arange(pairs), 10)):
        for k in range(fold_size):
            same = k < fold_size // 2
            a = rng.integers(identities)
            b = a if same else (a + rng.integers(1, identities)) % identities
            i, j = rng.choice(per_identity, size=2, replace=False)
            index_pairs.append((a * per_identity + i, b * per_identity + j))
            issame.append(same)
    return np.asarray(index_pairs), np.asarray(issame)


def build_synthetic(spec: SyntheticSpec, root: Path, workers: int = 0) -> None:
    """Generate the dataset into ``root`` (built in a temporary folder, then renamed into place)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        with ProcessPoolExecutor(max_workers=workers or usable_cores()) as pool:
            train = pool.map(render_identity, *_jobs(spec.seed, _TRAIN, spec.num_classes, spec.images_per_class), chunksize=8)
            labelled = ((label, image) for label, images in enumerate(train) for image in images)
            write_insightface_folder(tmp, labelled, spec.num_classes)
            val = list(pool.map(render_identity, *_jobs(spec.seed, _VAL, spec.val_identities, spec.val_images_per_identity), chunksize=8))
        flat = [image for images in val for image in images]
        pairs, issame = sample_pairs(np.random.default_rng([spec.seed, _VAL]), spec.val_identities,
                                     spec.val_images_per_identity, spec.val_pairs)
        save_verification_bin(tmp / f"{VAL_TARGET}.bin", [flat[i] for i in pairs.reshape(-1)], issame.tolist())
        (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: its copy is identical
            if not (root / "spec.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _jobs(seed: int, stream: int, identities: int, count: int) -> tuple[list, ...]:
    return [seed] * identities, [stream] * identities, list(range(identities)), [count] * identities


def ensure_synthetic(spec: SyntheticSpec, root: Optional[str] = None) -> Path:
    """The dataset folder for ``spec``, generating it first if it is not there yet."""
    path = synthetic_root(spec, root)
    if not (path / "spec.json").is_file():
        build_synthetic(spec, path)
    return path
