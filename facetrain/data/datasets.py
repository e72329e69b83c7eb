"""Training datasets. Every dataset yields ``(image, label)``: uint8 CHW tensor ``[3,112,112]``, int."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from facetrain.data.images import decode_image
from facetrain.data.recordio import IRHeader, RecordReader, unpack_record
from facetrain.errors import DataError

Transform = Callable[[np.ndarray], np.ndarray]


def read_property(root: Path) -> Optional[int]:
    """``num_classes`` from insightface's ``property`` file (``num_classes,112,112``), if present."""
    path = root / "property"
    if not path.is_file():
        return None
    try:
        return int(path.read_text().strip().split(",")[0])
    except ValueError:
        raise DataError(f"{path} does not start with the number of classes",
                        "write it as 'num_classes,112,112'") from None


class RecordDataset(Dataset):
    """insightface-layout RecordIO folder: ``train.rec``, ``train.idx`` and optional ``property``.

    With a header record (key 0, ``flag > 0``), images are keys ``1 .. label[0] - 1``; without one,
    every key is an image. The label is the first float of the image's header.
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Transform] = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} does not exist",
                            "set dataset.root=<folder with train.rec, train.idx, property>")
        self.reader = RecordReader(self.root / "train.rec", self.root / "train.idx")
        self.transform = transform
        self.keys = self._image_keys()
        self.num_classes = read_property(self.root) or self._count_classes()

    def _image_keys(self) -> np.ndarray:
        if 0 in self.reader.index:
            header, _ = unpack_record(self.reader.read(0))
            if header.flag > 0:
                return np.arange(1, int(header.label[0]), dtype=np.int64)
        return np.asarray(self.reader.keys, dtype=np.int64)

    def _count_classes(self) -> int:
        return int(max(self.label_of(i) for i in range(len(self)))) + 1

    def label_of(self, index: int) -> int:
        header, _ = unpack_record(self.reader.read(int(self.keys[index])))
        return _class_of(header)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        key = int(self.keys[index])
        header, payload = unpack_record(self.reader.read(key))
        image = decode_image(payload, f"record {key} of {self.reader.rec_path}")
        if self.transform is not None:
            image = self.transform(image)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), _class_of(header)


def _class_of(header: IRHeader) -> int:
    """The class of an image record: its scalar label, or the first of its label vector."""
    return int(header.label if header.flag == 0 else header.label[0])
