"""The training set to clean: a RecordIO folder or identity folders, read as training reads it (same sample order,
so the index lists written for it are the ones ``dataset.include``/``exclude`` read)."""
from __future__ import annotations

from pathlib import Path

from facetrain.data.datasets import FaceDataset, RecordDataset
from facetrain.data.imagefolder import ImageFolderDataset
from facetrain.data.recordio import unpack_record
from facetrain.errors import DataError
from facetrain.eval.feature_cache import file_list_digest


def open_training_set(root: Path) -> FaceDataset:
    """The dataset at ``root`` without augmentation; a one-line DataError when ``root`` is neither layout."""
    if not root.exists():
        raise DataError(f"dataset {root} does not exist", "pass a RecordIO folder (train.rec, train.idx) or identity folders")
    if (root / "train.rec").is_file():
        return RecordDataset(root)
    if not root.is_dir():
        raise DataError(f"dataset {root} is not a folder", "pass a RecordIO folder (train.rec, train.idx) or identity folders")
    return ImageFolderDataset(root)


def dataset_digest(dataset: FaceDataset) -> str:
    """A digest of the files a feature row depends on (sizes and modification times)."""
    if isinstance(dataset, RecordDataset):
        return file_list_digest(dataset.root, ["train.rec", "train.idx"])
    return file_list_digest(dataset.root, [dataset.paths[i] for i in range(len(dataset))])


def encoded_image(dataset: FaceDataset, index: int) -> bytes:
    """The stored bytes of sample ``index`` (copied as they are into a new RecordIO)."""
    if isinstance(dataset, RecordDataset):
        return unpack_record(dataset.reader.read(int(dataset.keys[index])))[1]
    return Path(dataset.where(index)).read_bytes()
