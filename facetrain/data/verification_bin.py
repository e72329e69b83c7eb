"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ...): a pickle of ``(bins, issame_list)``."""
from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from facetrain.data.images import decode_image
from facetrain.errors import DataError
from facetrain.untrusted import UnsafeFileError, load_data_pickle

MAX_SIDE = 1024  # pixels: well above any verification set's face crops (112x112)
MAX_EXPANSION = 256  # decoded bytes per byte of the file: encoded face crops decode to about 5-10 times their size
_FIX = "use a pickle of (images, issame_list) as insightface writes them"


@dataclass(frozen=True)
class VerificationSet:
    """A decoded ``.bin``: each distinct image once (``images`` uint8 RGB ``[U, H, W, 3]``), ``index`` ``[2P]``
    its row for every pair member (pair i is ``images[index[2i]]``, ``images[index[2i + 1]]``) and ``issame``
    bool ``[P]``. A set that names one image in many pairs holds it once in memory."""

    images: np.ndarray
    index: np.ndarray
    issame: np.ndarray

    def pair_images(self) -> np.ndarray:
        """Every pair member's image, ``[2P, H, W, 3]`` (materialised: for small sets and tests)."""
        return self.images[self.index]


def load_verification_bin(path: str | os.PathLike) -> VerificationSet:
    """The decoded set of a ``.bin``; pair i is entries 2i and 2i+1.

    Reads Python 2 and 3 pickles; entries may be encoded image bytes or uint8 arrays. Nothing else is
    unpickled (:func:`facetrain.untrusted.load_data_pickle`): a file that would import anything is refused.
    """
    bins, issame = read_verification_bin(path)
    images, index = decode_verification_images(bins, path)
    return VerificationSet(images, index, issame)


def read_verification_bin(path: str | os.PathLike) -> tuple[list, np.ndarray]:
    """``(entries, issame bool [P])`` of a ``.bin``, its images still encoded (checked, not decoded).

    Refused in one line: entries other than encoded image bytes or uint8 ``HxWx3`` arrays, labels other than
    bools, images over :data:`MAX_SIDE` pixels a side, and sets that would decode to more than
    :data:`MAX_EXPANSION` times the file's size.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verification set {path} does not exist",
                        "check eval.targets and dataset.root (or pass the .bin path)")
    try:
        content = load_data_pickle(path, "a verification .bin holds only images and labels")
    except UnsafeFileError:
        raise
    except MemoryError:
        raise DataError(f"{path} is not a verification .bin (it declares an object larger than this machine's "
                        "memory)", _FIX) from None
    except Exception as exc:
        raise DataError(f"{path} is not a verification .bin ({_one_line(exc)})", _FIX) from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2
            and all(isinstance(part, (list, tuple)) or isinstance(part, np.ndarray) and part.ndim > 0 for part in content)):
        raise DataError(f"{path} is not a verification .bin (it holds a {type(content).__name__}, "
                        "not a pair of lists)", _FIX)
    bins, issame = list(content[0]), _labels(content[1], path)
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path} has {len(bins)} images for {len(issame)} pairs",
                        "a verification .bin holds exactly two images per pair")
    if not bins:
        raise DataError(f"{path} holds no pairs", _FIX)
    for i, entry in enumerate(bins):
        _check_entry(entry, f"image {i} of {path}")
    _check_decoded_size(bins, path)
    return bins, issame


def decode_verification_images(bins: list, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(images, index)`` of the entries of :func:`read_verification_bin`: each distinct entry decoded once to
    uint8 RGB (``images [U, H, W, 3]``, every image the size of the first, checked before it is decoded) and
    ``index [2P]`` its row for every entry. An entry the file repeats (pickle's memo) is one image."""
    rows = _distinct_rows(bins)
    first = _as_image(bins[0], f"image 0 of {path}")
    images = np.empty((int(rows.max()) + 1, *first.shape), np.uint8)
    images[0] = first
    decoded = 1
    for i, (entry, row) in enumerate(zip(bins, rows)):
        if row == decoded:  # rows are numbered in order of first appearance
            images[row] = _as_image(entry, f"image {i} of {path}", first.shape[:2])
            decoded += 1
    return images, rows


def _distinct_rows(bins: list) -> np.ndarray:
    """For every entry, the row of its distinct image, numbered in order of first appearance (an entry is the
    same image as an earlier one when it is the same object: the file stored it once)."""
    first_seen: dict[int, int] = {}
    return np.array([first_seen.setdefault(id(entry), len(first_seen)) for entry in bins], dtype=np.int64)


def _labels(issame: object, path: Path) -> np.ndarray:
    if isinstance(issame, np.ndarray):
        plain = issame.ndim == 1 and issame.dtype.kind in "biu"
    else:
        plain = all(isinstance(label, (bool, int, np.bool_, np.integer)) and label in (0, 1) for label in issame)
    if not plain:
        raise DataError(f"{path} is not a verification .bin (its pair labels are not bools)", _FIX)
    return np.asarray(issame, dtype=bool)


def _check_entry(entry: object, what: str) -> None:
    if isinstance(entry, (bytes, bytearray)):
        return
    encoded_or_rgb = isinstance(entry, np.ndarray) and (entry.ndim == 1 or entry.ndim == 3 and entry.shape[2] == 3)
    if encoded_or_rgb and entry.dtype == np.uint8:
        return  # insightface stores encoded bytes as 1-D uint8 arrays too
    held = f"a {entry.dtype} array of shape {entry.shape}" if isinstance(entry, np.ndarray) else f"of type {type(entry).__name__}"
    raise DataError(f"{what} is {held}, not encoded image bytes or a uint8 HxWx3 array", _FIX)


def _check_decoded_size(bins: list, path: Path) -> None:
    height, width = _image_size(bins[0], f"image 0 of {path}")
    distinct = int(_distinct_rows(bins).max()) + 1
    decoded, file_size = distinct * height * width * 3, path.stat().st_size
    if decoded > MAX_EXPANSION * file_size:
        raise DataError(f"{path} would decode to {decoded / 2**20:.0f} MiB ({distinct} images of {width}x{height}), "
                        f"more than {MAX_EXPANSION} times its {file_size} bytes",
                        "a verification .bin holds each image's encoded bytes (face crops decode to about 5-10 times "
                        "their size); re-create it from the images")


def _encoded(entry: bytes | bytearray | np.ndarray) -> bytes:
    return entry.tobytes() if isinstance(entry, np.ndarray) else bytes(entry)


def _image_size(entry: bytes | bytearray | np.ndarray, what: str) -> tuple[int, int]:
    """``(height, width)`` of an entry from its array shape or its encoded header, without decoding it."""
    if isinstance(entry, np.ndarray) and entry.ndim == 3:
        height, width = entry.shape[:2]
    else:
        data = _encoded(entry)
        height, width = _jpeg_size(data) or _header_size(data, what)
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise DataError(f"{what} is {width}x{height} pixels; a verification set holds face crops "
                        f"(at most {MAX_SIDE} pixels a side)", _FIX)
    return height, width


_START_OF_FRAME = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15 (C4, C8, CC are DHT, JPG, DAC)


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    """``(height, width)`` from a JPEG's frame header, read as libjpeg reads it (segment by segment, the first
    frame header), in a few microseconds; None when the data is not a JPEG laid out that plainly."""
    at = 2 if data[:2] == b"\xff\xd8" else len(data)
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in _START_OF_FRAME:
            return struct.unpack_from(">HH", data, at + 5)
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length: left to PIL
            return None
        else:  # a segment: its length follows the marker
            at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    return None


def _header_size(data: bytes, what: str) -> tuple[int, int]:
    """``(height, width)`` of any image format PIL reads, from its header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked by the caller
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception as exc:  # PIL raises several unrelated types for bad bytes
        reason = "no image format PIL reads" if isinstance(exc, UnidentifiedImageError) else _one_line(exc)
        raise DataError(f"{what} cannot be decoded ({reason})", "the file is corrupt or not an image; re-create it") from None
    return height, width


def _one_line(exc: Exception) -> str:
    return f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0]}"


def _as_image(entry: bytes | bytearray | np.ndarray, what: str, size: Optional[tuple[int, ...]] = None) -> np.ndarray:
    """The entry as an RGB ``[H, W, 3]`` array (``size`` when given), its size checked before it is decoded."""
    declared = _image_size(entry, what)
    if size is not None and sorted(declared) != sorted(size):  # an EXIF orientation may turn it: (w, h)
        _refuse_other_size(declared, size, what)
    image = entry if isinstance(entry, np.ndarray) and entry.ndim == 3 else decode_image(_encoded(entry), what)
    if size is not None and image.shape[:2] != tuple(size):
        _refuse_other_size(image.shape[:2], size, what)
    return image


def _refuse_other_size(found: tuple[int, ...], size: tuple[int, ...], what: str) -> None:
    raise DataError(f"{what} is {found[1]}x{found[0]} pixels, image 0 is {size[1]}x{size[0]}",
                    "a verification .bin holds images of one size; re-create it")


def save_verification_bin(target: str | os.PathLike | BinaryIO, encoded_images: list[bytes], issame: list[bool]) -> None:
    """Write a verification set in insightface's format (encoded images, pair-major order) to a path or an
    open binary file."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as f:
            save_verification_bin(f, encoded_images, issame)
        return
    pickle.dump((encoded_images, list(map(bool, issame))), target, protocol=pickle.HIGHEST_PROTOCOL)
