"""Builders of small data files for the data tests, written by the formats' own rules (not our writers)."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from facetrain.data.images import encode_jpeg

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)


def face(value: int, size: int = 112) -> np.ndarray:
    """A smooth RGB test image whose content depends on ``value`` (compresses like a photo)."""
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(6 * x + value) * 60, np.cos(5 * y + 0.5 * value) * 60, (x + y) * 40 + value % 50]
    return np.clip(np.stack(channels, -1) + 110, 0, 255).astype(np.uint8)


def frame(cflag: int, chunk: bytes) -> bytes:
    """One RecordIO frame as DESIGN.md section 5 describes it."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(chunk)) + chunk + b"\x00" * (-len(chunk) % 4)


def irheader(label: float | Sequence[float], id_: int = 0) -> bytes:
    """IRHeader ``<IfQQ``; a label vector sets ``flag`` to its length and follows the header."""
    if np.ndim(label) == 0:
        return struct.pack("<IfQQ", 0, float(label), id_, 0)
    return struct.pack("<IfQQ", len(label), 0.0, id_, 0) + struct.pack(f"<{len(label)}f", *label)


def jpeg_with_aligned_magic(image: np.ndarray, header_size: int) -> bytes:
    """A decodable JPEG whose comment segment holds the RecordIO magic 4-aligned within a record
    whose IRHeader is ``header_size`` bytes: the writer must split such a record."""
    jpeg = encode_jpeg(image)
    start = header_size + 2 + 4  # SOI, then the COM marker and its length
    comment = b"\x00" * (-start % 4) + MAGIC_BYTES + b"tail"
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    payload = jpeg[:2] + segment + jpeg[2:]
    assert (header_size + payload.index(MAGIC_BYTES)) % 4 == 0
    return payload


def write_rec_by_hand(root: Path, records: Sequence[bytes], keys: Sequence[int] | None = None) -> list[int]:
    """``train.rec``/``train.idx`` framing each record by hand (split at 4-aligned magics); returns offsets."""
    root.mkdir(parents=True, exist_ok=True)
    data, offsets = b"", []
    for record in records:
        offsets.append(len(data))
        parts = [record[i : i + 4] for i in range(0, len(record), 4)]
        cuts = [i * 4 for i, part in enumerate(parts) if part == MAGIC_BYTES]
        if not cuts:
            data += frame(0, record)
            continue
        bounds = [0, *cuts, len(record)]
        chunks = [record[: cuts[0]]] + [record[a + 4 : b] for a, b in zip(bounds[1:-1], bounds[2:])]
        flags = [1] + [2] * (len(chunks) - 2) + [3]
        data += b"".join(frame(f, c) for f, c in zip(flags, chunks))
    (root / "train.rec").write_bytes(data)
    keys = list(range(len(records))) if keys is None else list(keys)
    (root / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in zip(keys, offsets)))
    return offsets


def write_image_folder(root: Path, images_per_identity: Sequence[int], size: int = 112) -> dict[str, tuple[np.ndarray, int]]:
    """``root/id_<k>/<j>.jpg``; returns ``relative path -> (pixels as decoded, label)``."""
    from facetrain.data.images import decode_image

    written = {}
    for label, count in enumerate(images_per_identity):
        folder = root / f"id_{label:03d}"
        folder.mkdir(parents=True)
        for j in range(count):
            data = encode_jpeg(face(label * 10 + j, size))
            (folder / f"{j}.jpg").write_bytes(data)
            written[f"id_{label:03d}/{j}.jpg"] = (decode_image(data), label)
    return written
