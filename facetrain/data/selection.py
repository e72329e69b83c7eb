"""Training on part of a dataset: ``dataset.include=FILE`` / ``dataset.exclude=FILE`` index lists.

A list is text, one sample index per line (the dataset's own order: RecordIO image keys in ``.idx`` order,
image folders sorted by identity then file name); ``#`` lines are comments. ``scripts/clean_dataset.py`` writes
them with a header line ``# facetrain sample list: N samples of ROOT``; a list whose header names another
size is refused. The sampler sees only the kept samples, so a run resumes exactly as long as the list does not
change (the checkpoint's image count guards it).

Classes that lose every image are not left as dead class centres: the surviving classes are renumbered
``0..K'-1`` in their order (insightface's ``drop.py`` does the same), and the log says how many were dropped.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import numpy as np

from facetrain.data.balanced import dataset_labels
from facetrain.data.datasets import FaceDataset
from facetrain.errors import DataError

log = logging.getLogger("facetrain")

HEADER = "# facetrain sample list: {size} samples of {root}"
_HEADER_SIZE = re.compile(r"^# facetrain sample list: (\d+) samples of ")


def write_index_list(path: Path, indices: np.ndarray, size: int, root: Path | str) -> None:
    """``indices`` (of a dataset of ``size`` samples at ``root``) as a list that ``dataset.include``/``exclude`` read."""
    lines = [HEADER.format(size=size, root=root)] + [str(int(i)) for i in np.sort(indices)]
    Path(path).write_text("\n".join(lines) + "\n")


def read_index_list(path: str | Path, size: int, key: str) -> np.ndarray:
    """The sorted distinct indices of the list file ``path`` for a dataset of ``size`` samples; a one-line DataError
    naming ``key`` (``dataset.include``) for a missing file, a line that is not an index, an index out of range or
    a list written for a dataset of another size."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{key}={path}: no such file", f"pass a text file of sample indices, one a line, to {key}")
    indices = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        header = _HEADER_SIZE.match(text)
        if header and int(header.group(1)) != size:
            raise DataError(f"{key}={path} was written for a dataset of {header.group(1)} samples, this one has {size}",
                            "write the list again for this dataset (scripts/clean_dataset.py), or point dataset.root at "
                            "the dataset it was written for")
        if not text or text.startswith("#"):
            continue
        if not text.isdigit():
            raise DataError(f"{key}={path}:{line_no}: '{text[:40]}' is not a sample index",
                            "write one non-negative integer a line ('#' starts a comment)")
        index = int(text)
        if index >= size:
            raise DataError(f"{key}={path}:{line_no}: index {index} is out of range for a dataset of {size} samples",
                            f"write indices 0..{size - 1} of this dataset (scripts/clean_dataset.py writes them)")
        indices.append(index)
    return np.unique(np.asarray(indices, dtype=np.int64))


def selected_indices(size: int, include: Optional[str], exclude: Optional[str]) -> np.ndarray:
    """The indices ``include`` names (all when None) less those ``exclude`` names, sorted."""
    kept = read_index_list(include, size, "dataset.include") if include else np.arange(size, dtype=np.int64)
    if exclude:
        kept = np.setdiff1d(kept, read_index_list(exclude, size, "dataset.exclude"), assume_unique=True)
    if len(kept) == 0:
        raise DataError(f"dataset.include/exclude leave none of the {size} samples",
                        "check the lists: include names the samples to keep, exclude those to leave out")
    return kept


class SelectedDataset(FaceDataset):
    """The samples ``indices`` of ``base`` (its transform and bad-sample budget), labels renumbered
    ``0..K'-1`` when classes lost every image (``label_map[old] = new``, -1 for a dropped class)."""

    def __init__(self, base: FaceDataset, indices: np.ndarray) -> None:
        self.base, self.indices, self.root = base, indices, getattr(base, "root", None)
        base_labels = dataset_labels(base)
        kept_classes = np.unique(base_labels[indices])
        self.dropped_classes = len(np.unique(base_labels)) - len(kept_classes)
        self.label_map = np.arange(base.num_classes, dtype=np.int64)
        if self.dropped_classes:
            self.label_map = np.full(max(base.num_classes, int(base_labels.max()) + 1), -1, dtype=np.int64)
            self.label_map[kept_classes] = np.arange(len(kept_classes))
        self.labels = self.label_map[base_labels[indices]]
        super().__init__(base.transform, base.max_bad_fraction, base.image_size)
        self.num_classes = len(kept_classes) if self.dropped_classes else base.num_classes

    def label_of(self, index: int) -> int:
        return int(self.labels[index])

    def where(self, index: int) -> str:
        return self.base.where(int(self.indices[index]))

    def load(self, index: int) -> tuple[np.ndarray, int]:
        image, label = self.base.load(int(self.indices[index]))
        return image, int(self.label_map[label])

    def __len__(self) -> int:
        return len(self.indices)


def select(base: FaceDataset, include: Optional[str], exclude: Optional[str]) -> SelectedDataset:
    """``base`` restricted to the ``dataset.include``/``dataset.exclude`` lists, with what was left out logged."""
    dataset = SelectedDataset(base, selected_indices(len(base), include, exclude))
    renumbered = (f"; {dataset.dropped_classes} identities lost every image, the other {dataset.num_classes} "
                  f"renumbered 0..{dataset.num_classes - 1}") if dataset.dropped_classes else ""
    log.info(f"dataset.include/exclude keep {len(dataset)} of {len(base)} images{renumbered}")
    return dataset
