"""Pair lists over a folder of aligned face images, for the 10-fold verification protocol on your own data.

Two formats, told apart by their first line:

* LFW's ``pairs.txt``: a header ``<folds> <pairs per fold>`` (or one number, as ``pairsDevTrain.txt``), then
  per fold its matched lines ``name n1 n2`` and mismatched lines ``name1 n1 name2 n2``; image ``n`` of
  ``name`` is ``<images>/<name>/<name>_<n:04d>.jpg``. Folds are the file's consecutive blocks, exactly the
  contiguous folds the protocol uses.
* A plain list: ``path1 path2 same`` per line (``same`` is 1/0 or true/false; tab-separated when paths hold
  spaces), paths relative to ``<images>``. ``#`` starts a comment.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrain.errors import DataError

TRUE, FALSE = ("1", "true", "same"), ("0", "false", "different")


@dataclass
class PairList:
    """Two image names per pair (``names[2i]``, ``names[2i+1]``, relative to ``base``) and whether each pair is
    one identity."""

    path: Path
    base: Path
    names: list[str]
    issame: np.ndarray

    @property
    def name(self) -> str:
        return self.path.stem


def read_pairs(path: Path, images: Path) -> PairList:
    """The pairs of ``path`` (either format) over the images below ``images``; every image must exist."""
    if not path.is_file():
        raise DataError(f"pair list {path} does not exist", "pass LFW's pairs.txt or a list of 'path1 path2 same' lines")
    if not images.is_dir():
        raise DataError(f"image folder {images} does not exist", "pass --images, the folder the pair list's paths are in")
    lines = [(number, line.split("#", 1)[0]) for number, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise DataError(f"pair list {path} holds no pairs", "write one pair per line")
    header = lines[0][1].split()
    if 1 <= len(header) <= 2 and all(field.isdigit() for field in header):
        names, issame, numbers = _lfw_pairs(path, lines[1:], [int(field) for field in header])
    else:
        names, issame, numbers = _plain_pairs(path, lines)
    for index, name in enumerate(names):
        if not (images / name).is_file():
            raise DataError(f"{path}:{numbers[index // 2]}: image {images / name} does not exist",
                            "pass the --images folder the list was written for")
    return PairList(path, images, names, np.array(issame, dtype=bool))


def _lfw_pairs(path: Path, lines: list[tuple[int, str]], header: list[int]) -> tuple[list[str], list[bool], list[int]]:
    expected = header[0] * 2 * header[1] if len(header) == 2 else 2 * header[0]
    if len(lines) != expected:
        raise DataError(f"{path}: the header announces {expected} pairs but {len(lines)} follow",
                        "use LFW's pairs.txt unedited (or a plain list without a header)")
    names, issame, numbers = [], [], []
    for number, line in lines:
        fields = line.split()
        try:
            if len(fields) == 3:
                pair = [(fields[0], int(fields[1])), (fields[0], int(fields[2]))]
            elif len(fields) == 4:
                pair = [(fields[0], int(fields[1])), (fields[2], int(fields[3]))]
            else:
                raise ValueError
        except ValueError:
            raise DataError(f"{path}:{number}: '{line.strip()}' is not 'name n1 n2' or 'name1 n1 name2 n2'",
                            "use LFW's pairs.txt format") from None
        names += [f"{person}/{person}_{n:04d}.jpg" for person, n in pair]
        issame.append(len(fields) == 3)
        numbers.append(number)
    return names, issame, numbers


def _plain_pairs(path: Path, lines: list[tuple[int, str]]) -> tuple[list[str], list[bool], list[int]]:
    names, issame, numbers = [], [], []
    for number, line in lines:
        fields = line.rstrip("\n").split("\t") if "\t" in line else line.split()
        fields = [field.strip() for field in fields if field.strip()]
        same = fields[-1].lower() if len(fields) == 3 else None
        if same not in TRUE + FALSE:
            raise DataError(f"{path}:{number}: '{line.strip()}' is not 'path1 path2 same'",
                            "end each line with 1 or 0 (same identity or not); separate paths that hold spaces by tabs")
        names += fields[:2]
        issame.append(same in TRUE)
        numbers.append(number)
    return names, issame, numbers
