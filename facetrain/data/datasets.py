"""Training datasets. Every dataset yields ``(image, label)``: uint8 CHW tensor ``[3,112,112]``, int.

:class:`FaceDataset` holds what all of them share: skipping unreadable samples (each warned about
once, counted across DataLoader workers, fatal beyond ``max_bad_fraction``), the optional per-sample
:class:`~facetrain.data.augment.SampleTransform`, and the epoch it is told through :meth:`set_epoch`.
"""
from __future__ import annotations

import functools
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from facetrain.data.augment import SampleTransform
from facetrain.data.images import decode_image
from facetrain.data.recordio import RecordReader, read_property, unpack_record
from facetrain.errors import DataError

log = logging.getLogger("facetrain")
DEFAULT_MAX_BAD_FRACTION = 0.001


class BadDataError(DataError):
    """Too many unreadable samples. Raised in a DataLoader worker, it reaches the main process
    rebuilt from its traceback text; the constructor recovers the original one-line message."""

    def __init__(self, problem: str, fix: str = "") -> None:
        if problem.startswith("Caught ") and "Traceback" in problem:  # torch's ExceptionWrapper.reraise
            problem, fix = problem.strip().splitlines()[-1].split(": ", 1)[1], ""
        super().__init__(problem, fix)


class FaceDataset(Dataset, ABC):
    """Base class: subclasses set ``num_classes`` and implement ``__len__``, :meth:`load` and :meth:`where`."""

    num_classes: int

    def __init__(self, transform: Optional[SampleTransform], max_bad_fraction: float, image_size: int = 112) -> None:
        self.transform, self.max_bad_fraction, self.image_size = transform, max_bad_fraction, image_size
        # shared memory: DataLoader workers (persistent ones too) see set_epoch and each other's bad samples
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._bad = torch.zeros(len(self), dtype=torch.bool).share_memory_()

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, int]:
        """``(RGB uint8 [H,W,3] image, label)`` of sample ``index``; a DataError if it is unreadable."""

    @abstractmethod
    def where(self, index: int) -> str:
        """Where sample ``index`` lives (a file, or a record and its offset), for messages."""

    def decode(self, data: bytes, index: int) -> np.ndarray:
        """``data`` decoded and sized ``image_size``; a DataError naming :meth:`where` if it cannot be."""
        try:
            return decode_image(data, size=self.image_size)
        except DataError as exc:
            raise self.located(index, exc) from None

    def located(self, index: int, exc: DataError) -> DataError:
        """``exc`` with :meth:`where` sample ``index`` lives in front of its message."""
        return DataError(f"{self.where(index)}: {exc.problem}", exc.fix)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the per-sample augmentation is drawn for; call it before iterating the epoch."""
        self._epoch[0] = epoch

    @property
    def bad_count(self) -> int:
        """Unreadable samples met so far, in this process and its DataLoader workers."""
        return int(self._bad.sum())

    @property
    def bad_indices(self) -> list[int]:
        """The indices of the unreadable samples met so far, in this process and its DataLoader workers."""
        return torch.nonzero(self._bad).flatten().tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self._load_readable(index)
        if self.transform is not None:
            image = self.transform(image, int(self._epoch[0]), index)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label

    def _load_readable(self, index: int) -> tuple[np.ndarray, int]:
        """Sample ``index``, or the next readable one after it (wrapping) if it is unreadable."""
        bad = self._bad.numpy()
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if bad[candidate]:
                continue
            try:
                return self.load(candidate)
            except DataError as exc:
                self._skip(candidate, exc)
        raise BadDataError(f"no sample of the dataset can be read (the last tried: {self.where(index)})",
                           "re-create the dataset")

    def _skip(self, index: int, exc: DataError) -> None:
        self._bad[index] = True
        count = self.bad_count
        log.warning(f"skipping unreadable sample {index} ({count} so far): {exc.problem}")
        if count > self.max_bad_fraction * len(self):
            raise BadDataError(
                f"{count} of {len(self)} samples are unreadable, more than dataset.max_bad_fraction="
                f"{self.max_bad_fraction} (the last: {exc.problem})",
                "re-create or re-download the dataset, or raise dataset.max_bad_fraction")


class RecordDataset(FaceDataset):
    """insightface-layout RecordIO folder: ``train.rec``, ``train.idx`` and optional ``property``.

    With a header record (key 0, ``flag > 0``), images are keys ``1 .. label[0] - 1``; without one,
    every key is an image. The label is the first float of the image's header.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Optional[SampleTransform] = None,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        image_size: int = 112,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} does not exist",
                            "set dataset.root=<folder with train.rec, train.idx, property>")
        self.reader = RecordReader(self.root / "train.rec", self.root / "train.idx")
        self.keys = self._image_keys()
        super().__init__(transform, max_bad_fraction, image_size)
        self.num_classes = read_property(self.root) or self._count_classes()

    def _image_keys(self) -> np.ndarray:
        if 0 in self.reader:
            header, _ = unpack_record(self.reader.read(0))
            if header.flag > 0:
                return np.arange(1, int(header.label[0]), dtype=np.int64)
        return self.reader.keys

    def _count_classes(self) -> int:
        classes = max(self.label_of(i) for i in range(len(self))) + 1
        log.warning(f"{self.root / 'property'} is missing: inferred {classes} classes from the labels; "
                    f"create it with: echo {classes},{self.image_size},{self.image_size} > {self.root / 'property'}")
        return classes

    def label_of(self, index: int) -> int:
        """The label of sample ``index``, without decoding its image."""
        return self.reader.read_class(int(self.keys[index]))

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """The label of every sample, ``[len(self)]`` int64, read from the records' headers in one pass (no image
        is decoded); the balanced samplers need them (:func:`facetrain.data.balanced.dataset_labels`)."""
        return self.reader.read_classes(self.keys)

    def where(self, index: int) -> str:
        key = int(self.keys[index])
        return f"record {key} of {self.reader.rec_path} (offset {self.reader.offset(key)})"

    def load(self, index: int) -> tuple[np.ndarray, int]:
        record = self.reader.read(int(self.keys[index]))  # its errors name the file and the offset
        try:
            header, payload = unpack_record(record)
        except DataError as exc:
            raise self.located(index, exc) from None
        return self.decode(payload, index), header.class_id

    def __len__(self) -> int:
        return len(self.keys)
