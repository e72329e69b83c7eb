"""Pure-Python MXNet RecordIO (``.rec`` + ``.idx``) and insightface's IRHeader, without mxnet.

Record framing: ``uint32 magic 0xced7230a``, ``uint32 lrec`` (``cflag = lrec >> 29``,
``length = lrec & (2**29 - 1)``), payload, zero padding to a multiple of 4. A writer that meets the
magic at a 4-aligned offset inside a payload splits the record there (cflag 1 start, 2 middle,
3 end); the reader re-inserts the magic between the parts. The ``.idx`` file is ``key\\toffset``.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from facetrain.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_IRHEADER = struct.Struct("<IfQQ")


@dataclass(frozen=True)
class IRHeader:
    """insightface's image-record header. ``label`` is a float, or an array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0


def pack_record(label: float | Sequence[float], payload: bytes, id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + optional float32 label vector + payload, as ``mx.recordio.pack`` writes it."""
    if np.ndim(label) == 0:
        return _IRHEADER.pack(0, float(label), id, id2) + payload
    labels = np.asarray(label, dtype="<f4")
    return _IRHEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + payload


def unpack_record(record: bytes) -> tuple[IRHeader, bytes]:
    """Inverse of :func:`pack_record`: ``(header, payload)``."""
    if len(record) < _IRHEADER.size:
        raise DataError(f"record of {len(record)} bytes is shorter than its 24-byte header",
                        "the .rec file is truncated or corrupt; re-create it")
    flag, label, id_, id2 = _IRHEADER.unpack_from(record)
    offset = _IRHEADER.size
    if flag > 0:
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=offset).copy()
        offset += 4 * flag
    return IRHeader(flag, label, id_, id2), record[offset:]


def _frame(cflag: int, chunk: bytes) -> bytes:
    pad = -len(chunk) % 4
    return struct.pack("<II", MAGIC, (cflag << 29) | len(chunk)) + chunk + b"\x00" * pad


def encode_frames(payload: bytes) -> bytes:
    """Frame ``payload`` as one record, splitting it wherever the magic sits 4-aligned inside it."""
    splits = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == _MAGIC_BYTES]
    if not splits:
        return _frame(0, payload)
    bounds = [0] + splits + [len(payload)]
    chunks = [payload[bounds[0] : bounds[1]]] + [
        payload[start + 4 : end] for start, end in zip(bounds[1:-1], bounds[2:])
    ]
    flags = [1] + [2] * (len(chunks) - 2) + [3]
    return b"".join(_frame(flag, chunk) for flag, chunk in zip(flags, chunks))


class RecordWriter:
    """Appends records to ``.rec`` and their offsets to ``.idx``."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w")

    def write(self, key: int, record: bytes) -> None:
        """Write ``record`` under integer ``key``."""
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(encode_frames(record))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_index(idx_path: str | os.PathLike) -> dict[int, int]:
    """``key -> byte offset`` from a ``.idx`` file."""
    index: dict[int, int] = {}
    with open(idx_path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(f"{idx_path}:{line_no} is not 'key<TAB>offset'",
                                "the .idx file is corrupt; re-create it with scripts/convert_to_rec.py")
            index[int(parts[0])] = int(parts[1])
    return index


class RecordReader:
    """Random access to an indexed ``.rec`` file; safe in DataLoader workers (one handle per process)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.rec_path = Path(rec_path)
        for path in (self.rec_path, Path(idx_path)):
            if not path.is_file():
                raise DataError(f"{path} does not exist", "point dataset.root at a folder with train.rec and train.idx")
        self.index = read_index(idx_path)
        self.keys = sorted(self.index)
        self._fd: int | None = None
        self._pid = -1
        self._size = self.rec_path.stat().st_size

    def _handle(self) -> int:
        if self._pid != os.getpid():  # a forked worker must not share the parent's descriptor
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd  # type: ignore[return-value]

    def read(self, key: int) -> bytes:
        """The record stored under ``key``, with split parts re-joined."""
        fd, offset, parts = self._handle(), self.index[key], []
        while True:
            head = os.pread(fd, 8, offset)
            if len(head) < 8:
                raise DataError(f"record {key} of {self.rec_path} runs past the end of the file",
                                "the .rec file is truncated; re-create or re-download it")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(f"record {key} of {self.rec_path} has a bad magic number at offset {offset}",
                                "the .rec file or its .idx is corrupt; re-create them")
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if offset + 8 + length > self._size:
                raise DataError(f"record {key} of {self.rec_path} runs past the end of the file",
                                "the .rec file is truncated; re-create or re-download it")
            parts.append(os.pread(fd, length, offset + 8))
            offset += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def write_records(rec_path: str | os.PathLike, idx_path: str | os.PathLike, records: Iterable[tuple[int, bytes]]) -> None:
    """Write ``(key, record)`` pairs to a new ``.rec``/``.idx``."""
    with RecordWriter(rec_path, idx_path) as writer:
        for key, record in records:
            writer.write(key, record)


def write_insightface_folder(
    root: str | os.PathLike, labelled_images: Iterable[tuple[int, bytes]], num_classes: int, image_size: int = 112
) -> int:
    """Write ``train.rec``/``train.idx``/``property`` in insightface's layout; returns the image count.

    ``labelled_images`` must come grouped by label, labels ``0 .. num_classes-1`` in order. Key 0 is
    the header (label ``[N+1, N+1+K]``), keys ``1..N`` the images, keys ``N+1..N+K`` one record per
    identity with its ``[start, end)`` key range.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    images: list[tuple[int, bytes]] = list(labelled_images)
    n = len(images)
    ranges = {}
    for key, (label, _) in enumerate(images, start=1):
        start, _ = ranges.get(label, (key, key))
        ranges[label] = (start, key + 1)
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record([n + 1, n + 1 + len(ranges)], b""))
        for key, (label, payload) in enumerate(images, start=1):
            writer.write(key, pack_record(float(label), payload, id=key))
        for offset, label in enumerate(sorted(ranges)):
            writer.write(n + 1 + offset, pack_record(list(ranges[label]), b""))
    (root / "property").write_text(f"{num_classes},{image_size},{image_size}\n")
    return n
