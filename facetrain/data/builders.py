"""Datasets by config name: ``dataset=<name>`` -> a training set and its verification targets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from facetrain.data.augment import SampleTransform, build_augment
from facetrain.data.datasets import DEFAULT_MAX_BAD_FRACTION, FaceDataset, RecordDataset
from facetrain.data.imagefolder import ImageFolderDataset
from facetrain.data.selection import select
from facetrain.data.synthetic import SyntheticSpec, check_root, ensure_synthetic, synthetic_root
from facetrain.parallel.groups import barrier, dist_info
from facetrain.errors import ConfigError, DataError
from facetrain.registry import Registry

DATASETS: Registry = Registry("dataset")


@dataclass
class TrainData:
    dataset: FaceDataset
    num_classes: int
    root: Path  # where verification targets named in eval.targets are looked up


@DATASETS.register("synthetic")
def synthetic(root: Optional[str], num_classes: int, transform: Optional[SampleTransform], max_bad_fraction: float,
              **spec: Any) -> TrainData:
    """Generate (rank 0, once) and open the synthetic identities dataset."""
    spec_ = SyntheticSpec(num_classes=num_classes, **spec)
    _require_two(num_classes, "dataset=synthetic")
    check_root(spec_, root)
    if dist_info().is_main:
        ensure_synthetic(spec_, root)
    barrier()
    path = synthetic_root(spec_, root)
    return TrainData(RecordDataset(path, transform, max_bad_fraction), num_classes, path)


def rec(root: Optional[str], num_classes: Optional[int], transform: Optional[SampleTransform],
        max_bad_fraction: float) -> TrainData:
    """Any insightface-layout RecordIO folder (MS1Mv3, CASIA-WebFace, Glint360K and WebFace as insightface ships
    them)."""
    dataset = RecordDataset(_require(root), transform, max_bad_fraction)
    return TrainData(dataset, _check_classes(num_classes, dataset.num_classes, root), dataset.root)


for _name in ("rec", "ms1mv3", "casia_webface", "glint360k", "webface4m", "webface12m", "webface42m"):
    DATASETS.register(_name)(rec)


@DATASETS.register("imagefolder")
def imagefolder(root: Optional[str], num_classes: Optional[int], transform: Optional[SampleTransform],
                max_bad_fraction: float, resize_unaligned: bool = False) -> TrainData:
    """``root/<identity>/*.jpg`` or a list file of ``path label`` lines (raw photos refused unless ``resize_unaligned``)."""
    dataset = ImageFolderDataset(_require(root), transform, max_bad_fraction, resize_unaligned=resize_unaligned)
    _require_two(len(np.unique(dataset.labels)), str(dataset.root))  # a list file's labels may leave numbers out
    return TrainData(dataset, _check_classes(num_classes, dataset.num_classes, root), dataset.root)


def _require(root: Optional[str]) -> str:
    if not root:
        raise ConfigError("dataset.root is not set", "pass dataset.root=<the dataset's folder>")
    return root


def _check_classes(configured: Optional[int], found: int, root: Optional[str]) -> int:
    if configured is not None and configured != found:
        raise DataError(f"dataset.num_classes={configured} but {root} holds {found} classes",
                        f"set dataset.num_classes={found} (or null to infer it)")
    _require_two(found, str(root))
    return found


def _require_two(identities: int, where: str) -> None:
    """Refuse training data of fewer than two identities: a classifier of one class has nothing to learn (its
    loss falls to 0 at once and the run looks successful)."""
    if identities < 2:
        raise DataError(f"{where} holds {identities} {'identity' if identities == 1 else 'identities'}: training "
                        "needs at least two (with one, the loss falls to 0 without learning anything)",
                        "add identities, or point dataset.root at the whole dataset")


def build_train_data(name: str, **hparams: Any) -> TrainData:
    """The training data of ``dataset=<name>`` with its ``augment`` transform, restricted to the
    ``include``/``exclude`` index lists when given (:mod:`facetrain.data.selection`); ``val_targets`` is not
    the builder's business."""
    hparams.pop("val_targets", None)
    include, exclude = hparams.pop("include", None), hparams.pop("exclude", None)
    transform = build_augment(**hparams.pop("augment", {}))
    data = DATASETS.get(name)(transform=transform, max_bad_fraction=hparams.pop("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION), **hparams)
    if not (include or exclude):
        return data
    dataset = select(data.dataset, include, exclude)
    _require_two(dataset.num_classes, "dataset.include/exclude")
    return TrainData(dataset, dataset.num_classes, data.root)


def resolve_targets(targets: list[str], root: Path) -> dict[str, Path]:
    """``name -> path`` of each verification target: ``<root>/<name>.bin``, or a path to a ``.bin``."""
    resolved = {}
    for target in targets:
        is_path = target.endswith(".bin") or "/" in target
        path = Path(target) if is_path else root / f"{target}.bin"
        if not path.is_file():
            present = sorted(p.stem for p in root.glob("*.bin")) if root.is_dir() else []
            raise DataError(f"verification target '{target}' not found at {path}"
                            + (f" ({root} has: {', '.join(present)})" if present else ""),
                            "put <name>.bin in dataset.root, pass a .bin path, or set eval.targets=[]")
        name = path.stem if is_path else target
        if name in resolved:
            raise DataError(f"two verification targets are named '{name}' ({resolved[name]} and {path})",
                            "name each target once (rename one of the .bin files)")
        resolved[name] = path
    return resolved
