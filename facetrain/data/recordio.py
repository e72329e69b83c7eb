"""Pure-Python MXNet RecordIO (``.rec`` + ``.idx``) and insightface's IRHeader, without mxnet.

Record framing: ``uint32 magic 0xced7230a``, ``uint32 lrec`` (``cflag = lrec >> 29``,
``length = lrec & (2**29 - 1)``), payload, zero padding to a multiple of 4. A writer that meets the
magic at a 4-aligned offset inside a payload splits the record there (cflag 1 start, 2 middle,
3 end); the reader re-inserts the magic between the parts. The ``.idx`` file is ``key\\toffset``.
"""
from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from facetrain.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_IRHEADER = struct.Struct("<IfQQ")
_FRAME_HEAD = struct.Struct("<II")
REINDEX_HINT = "rebuild it with: python scripts/convert_to_rec.py --reindex {root}"


@dataclass(frozen=True)
class IRHeader:
    """insightface's image-record header. ``label`` is a float, or an array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0

    @property
    def class_id(self) -> int:
        """The class of an image record: its scalar label, or the first of its label vector."""
        return int(self.label if self.flag == 0 else self.label[0])


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
        if len(record) < offset + 4 * flag:
            raise DataError(f"record of {len(record)} bytes is shorter than its header's {flag} labels",
                            "the .rec file is truncated or corrupt; re-create it")
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=offset).copy()
        offset += 4 * flag
    return IRHeader(flag, label, id_, id2), record[offset:]


def _frame(cflag: int, chunk: bytes) -> bytes:
    pad = -len(chunk) % 4
    return _FRAME_HEAD.pack(MAGIC, (cflag << 29) | len(chunk)) + chunk + b"\x00" * pad


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


def read_frames(fd: int, offset: int, size: int, where: str) -> tuple[bytes, int]:
    """The record whose first frame starts at ``offset`` of the open file ``fd`` (``size`` bytes long),
    split parts re-joined, and the offset just past it. ``where`` names the record in errors."""
    parts = []
    while True:
        head = os.pread(fd, 8, offset)
        if len(head) < 8:
            raise DataError(f"{where}: offset {offset} is past the end of the file", "the .rec file is truncated or its .idx is wrong; re-create them")
        magic, lrec = _FRAME_HEAD.unpack(head)
        if magic != MAGIC:
            raise DataError(f"{where}: bad magic number at offset {offset}", "the .rec file or its .idx is corrupt; re-create them")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if offset + 8 + length > size:
            raise DataError(f"{where}: the record at offset {offset} runs past the end of the file",
                            "the .rec file is truncated; re-create or re-download it")
        parts.append(os.pread(fd, length, offset + 8))
        offset += 8 + length + (-length % 4)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts), offset


class RecordWriter:
    """Appends records to ``.rec`` and their offsets to ``.idx``."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w")

    def write(self, key: int, record: bytes) -> None:
        """Write ``record`` under integer ``key``."""
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(encode_frames(record))

    def overwrite(self, offset: int, record: bytes) -> None:
        """Replace the record written at ``offset`` by one of the same size (e.g. a header written first)."""
        end = self._rec.tell()
        self._rec.seek(offset)
        self._rec.write(encode_frames(record))
        self._rec.seek(end)

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_index(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, offsets)`` int64 arrays from a ``.idx`` file, sorted by key."""
    text = Path(idx_path).read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (instead of failing) on text it cannot parse
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            values = np.empty(0, dtype=np.int64)
    if values.size != 2 * text.count("\t"):
        _raise_bad_index_line(idx_path, text)
    keys, offsets = values[0::2], values[1::2]
    order = np.argsort(keys, kind="stable")
    return keys[order], offsets[order]


def _raise_bad_index_line(idx_path: str | os.PathLike, text: str) -> None:
    for line_no, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t")
        if line.strip() and (len(parts) != 2 or not all(p.strip().isdigit() for p in parts)):
            break
    else:
        line_no = 0
    raise DataError(f"{idx_path}:{line_no} is not 'key<TAB>offset'", REINDEX_HINT.format(root=Path(idx_path).parent))


class RecordReader:
    """Random access to an indexed ``.rec`` file; safe in DataLoader workers (one handle per process)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self._fd: int | None = None
        self._pid = -1
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path} does not exist", "point dataset.root at a folder with train.rec and train.idx")
        if not Path(idx_path).is_file():
            raise DataError(f"{idx_path} does not exist", REINDEX_HINT.format(root=self.rec_path.parent))
        self.keys, self._offsets = read_index(idx_path)
        self._dense = bool(np.array_equal(self.keys, np.arange(len(self.keys))))  # key == position: no search
        self._size = self.rec_path.stat().st_size

    def _handle(self) -> int:
        if self._pid != os.getpid():  # a forked worker must not share the parent's descriptor
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd  # type: ignore[return-value]

    def offset(self, key: int) -> int:
        """Byte offset of the record stored under ``key``."""
        position = key if self._dense else int(np.searchsorted(self.keys, key))
        if not (0 <= position < len(self.keys)) or self.keys[position] != key:
            raise KeyError(key)
        return int(self._offsets[position])

    def read(self, key: int) -> bytes:
        """The record stored under ``key``, with split parts re-joined."""
        offset = self.offset(key)
        return read_frames(self._handle(), offset, self._size, f"record {key} of {self.rec_path}")[0]

    def read_class(self, key: int) -> int:
        """:attr:`IRHeader.class_id` of record ``key``, reading only its first 36 bytes when it can."""
        head = os.pread(self._handle(), 8 + _IRHEADER.size + 4, self.offset(key))
        if len(head) == 36:
            magic, lrec = _FRAME_HEAD.unpack_from(head)
            if magic == MAGIC and lrec >> 29 == 0 and lrec & _LENGTH_MASK >= 28:
                flag, label = struct.unpack_from("<If", head, 8)
                return int(label if flag == 0 else struct.unpack_from("<f", head, 32)[0])
        return unpack_record(self.read(key))[0].class_id

    def read_classes(self, keys: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """:meth:`read_class` of every key, ``[len(keys)]`` int64: the records' first 36 bytes gathered from a
        memory map, ``chunk`` records at a time (seconds for millions of records, where one read each takes
        minutes); records whose label is not within them (split records) are read as :meth:`read_class` reads."""
        keys = np.asarray(keys, dtype=np.int64)
        classes = np.empty(len(keys), dtype=np.int64)
        if self._size < 36:
            return np.array([self.read_class(int(k)) for k in keys], dtype=np.int64)
        data = np.memmap(self.rec_path, dtype=np.uint8, mode="r")
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            position = part if self._dense else np.searchsorted(self.keys, part)
            found = (position >= 0) & (position < len(self.keys))
            found[found] &= self.keys[position[found]] == part[found]
            offsets = np.where(found, self._offsets[np.where(found, position, 0)], 0)
            found &= offsets + 36 <= self._size
            heads = data[np.where(found, offsets, 0)[:, None] + np.arange(36)]  # [n, 36] bytes
            words = heads.view("<u4")
            magic, lrec, flag = words[:, 0], words[:, 1], words[:, 2]
            whole = found & (magic == MAGIC) & (lrec >> 29 == 0) & (lrec & _LENGTH_MASK >= 28)
            labels = np.where(flag == 0, heads[:, 12:16].copy().view("<f4")[:, 0], heads[:, 32:36].copy().view("<f4")[:, 0])
            classes[start : start + len(part)] = np.trunc(np.where(whole, labels, 0)).astype(np.int64)  # int()
            for i in np.flatnonzero(~whole):
                classes[start + i] = self.read_class(int(part[i]))
        return classes

    def __contains__(self, key: int) -> bool:
        try:
            self.offset(key)
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def scan_records(rec_path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(offset, record)`` of every record of ``rec_path`` in file order (no ``.idx`` needed)."""
    size = Path(rec_path).stat().st_size
    fd = os.open(rec_path, os.O_RDONLY)
    try:
        offset = 0
        while offset < size:
            record, after = read_frames(fd, offset, size, str(rec_path))
            yield offset, record
            offset = after
    finally:
        os.close(fd)


def write_records(rec_path: str | os.PathLike, idx_path: str | os.PathLike, records: Iterable[tuple[int, bytes]]) -> None:
    """Write ``(key, record)`` pairs to a new ``.rec``/``.idx``."""
    with RecordWriter(rec_path, idx_path) as writer:
        for key, record in records:
            writer.write(key, record)


# ---- insightface's folder layout ------------------------------------------------------------------
def read_property(root: Path) -> int | None:
    """``num_classes`` from insightface's ``property`` file (``num_classes,112,112``), if present."""
    path = root / "property"
    if not path.is_file():
        return None
    try:
        return int(path.read_text().strip().split(",")[0])
    except ValueError:
        raise DataError(f"{path} does not start with the number of classes",
                        "write it as 'num_classes,112,112'") from None


def write_property(root: Path, num_classes: int, image_size: int = 112) -> None:
    (root / "property").write_text(f"{num_classes},{image_size},{image_size}\n")


def write_insightface_folder(
    root: str | os.PathLike, labelled_images: Iterable[tuple[int, bytes]], num_classes: int, image_size: int = 112
) -> int:
    """Stream ``train.rec``/``train.idx``/``property`` in insightface's layout; returns the image count.

    ``labelled_images`` yields ``(label, encoded image)`` grouped by label. Key 0 is the header (label
    ``[N+1, N+1+K]``), keys ``1..N`` the images, keys ``N+1..N+K`` one record per identity with its
    ``[start, end)`` key range. The header is written first as a same-sized placeholder and filled in
    at the end, so the images are never held in memory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ranges: dict[int, list[int]] = {}
    n = 0
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record([0, 0], b""))
        for n, (label, payload) in enumerate(labelled_images, start=1):
            if label in ranges and ranges[label][1] != n:
                raise ValueError(f"images of label {label} are not contiguous: insightface's layout groups them")
            ranges.setdefault(label, [n, n])[1] = n + 1
            writer.write(n, pack_record(float(label), payload, id=n))
        for offset, key_range in enumerate(ranges.values()):
            writer.write(n + 1 + offset, pack_record(key_range, b""))
        writer.overwrite(0, pack_record([n + 1, n + 1 + len(ranges)], b""))
    write_property(root, num_classes, image_size)
    return n
