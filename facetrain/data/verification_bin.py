"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ...): a pickle of ``(bins, issame_list)``."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np

from facetrain.data.images import decode_image
from facetrain.errors import DataError
from facetrain.untrusted import UnsafeFileError, load_data_pickle


def load_verification_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [2P,112,112,3] RGB, issame bool [P])``; pair i is rows 2i and 2i+1.

    Reads Python 2 and 3 pickles; entries may be encoded image bytes or uint8 arrays. Nothing else is
    unpickled (:func:`facetrain.untrusted.load_data_pickle`): a file that would import anything is refused.
    """
    bins, issame = read_verification_bin(path)
    return decode_verification_images(bins, path), issame


def read_verification_bin(path: str | os.PathLike) -> tuple[list, np.ndarray]:
    """``(entries, issame bool [P])`` of a ``.bin``, its images still encoded (checked, not decoded)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verification set {path} does not exist",
                        "check eval.targets and dataset.root (or pass the .bin path)")
    fix = "use a pickle of (images, issame_list) as insightface writes them"
    try:
        content = load_data_pickle(path, "a verification .bin holds only images and labels")
    except UnsafeFileError:
        raise
    except Exception as exc:
        raise DataError(f"{path} is not a verification .bin ({exc.__class__.__name__}: {exc})", fix) from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2
            and all(isinstance(part, (list, tuple, np.ndarray)) for part in content)):
        raise DataError(f"{path} is not a verification .bin (it holds a {type(content).__name__}, "
                        "not a pair of lists)", fix)
    bins, issame = content
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path} has {len(bins)} images for {len(issame)} pairs",
                        "a verification .bin holds exactly two images per pair")
    return list(bins), np.asarray(issame, dtype=bool)


def decode_verification_images(bins: list, path: str | os.PathLike) -> np.ndarray:
    """The entries of :func:`read_verification_bin` as uint8 RGB ``[2P, H, W, 3]``."""
    return np.stack([_as_image(entry, f"image {i} of {path}") for i, entry in enumerate(bins)])


def _as_image(entry: object, what: str) -> np.ndarray:
    if isinstance(entry, np.ndarray) and entry.dtype == np.uint8 and entry.ndim == 3:
        return entry
    if isinstance(entry, np.ndarray):  # insightface stores encoded bytes as 1-D uint8 arrays too
        entry = entry.tobytes()
    return decode_image(bytes(entry), what)


def save_verification_bin(target: str | os.PathLike | BinaryIO, encoded_images: list[bytes], issame: list[bool]) -> None:
    """Write a verification set in insightface's format (encoded images, pair-major order) to a path or an
    open binary file."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as f:
            save_verification_bin(f, encoded_images, issame)
        return
    pickle.dump((encoded_images, list(map(bool, issame))), target, protocol=pickle.HIGHEST_PROTOCOL)
