"""Datasets by config name: ``dataset=<name>`` -> a training set and its verification targets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch.utils.data import Dataset

from facetrain.data.datasets import RecordDataset
from facetrain.data.synthetic import SyntheticSpec, ensure_synthetic, synthetic_root
from facetrain.engine.distributed import barrier, dist_info
from facetrain.errors import ConfigError, DataError
from facetrain.registry import Registry

DATASETS: Registry = Registry("dataset")


@dataclass
class TrainData:
    dataset: Dataset
    num_classes: int
    root: Path


@DATASETS.register("synthetic")
def synthetic(root: Optional[str], num_classes: int, **spec: Any) -> TrainData:
    """Generate (rank 0, once) and open the synthetic identities dataset."""
    spec_ = SyntheticSpec(num_classes=num_classes, **spec)
    if dist_info().is_main:
        ensure_synthetic(spec_, root)
    barrier()
    path = synthetic_root(spec_, root)
    return TrainData(RecordDataset(path), num_classes, path)


@DATASETS.register("rec")
def rec(root: Optional[str], num_classes: Optional[int]) -> TrainData:
    """Any insightface-layout RecordIO folder."""
    if not root:
        raise ConfigError("dataset.root is not set", "pass dataset.root=<folder with train.rec, train.idx, property>")
    dataset = RecordDataset(root)
    return TrainData(dataset, _check_classes(num_classes, dataset.num_classes, root), Path(root))


def _check_classes(configured: Optional[int], found: int, root: str) -> int:
    if configured is not None and configured != found:
        raise DataError(f"dataset.num_classes={configured} but {root} holds {found} classes",
                        f"set dataset.num_classes={found} (or null to infer it)")
    return found


def build_train_data(name: str, **hparams: Any) -> TrainData:
    """The training data of ``dataset=<name>``; ``val_targets`` is not the builder's business."""
    hparams.pop("val_targets", None)
    return DATASETS.get(name)(**hparams)


def resolve_targets(targets: list[str], root: Path) -> dict[str, Path]:
    """``name -> path`` of each verification target: ``<root>/<name>.bin`` or a path to a ``.bin``."""
    resolved = {}
    for target in targets:
        path = Path(target) if target.endswith(".bin") else root / f"{target}.bin"
        if not path.is_file():
            raise DataError(f"verification target '{target}' not found at {path}",
                            "put <name>.bin in dataset.root, pass a .bin path, or set eval.targets=[]")
        resolved[path.stem if target.endswith(".bin") else target] = path
    return resolved
