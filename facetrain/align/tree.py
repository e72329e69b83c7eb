"""The photos of an input folder (identity folders, a flat folder, or deeper trees) and where each one's crop
goes in the output folder, which mirrors the input."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from facetrain.data.imagefolder import IMAGE_SUFFIXES
from facetrain.errors import DataError

PHOTO_SUFFIXES = IMAGE_SUFFIXES | {".tif", ".tiff", ".jfif"}
FORMATS = ("jpg", "png")


@dataclass(frozen=True)
class Photo:
    """A photo by its path relative to the input folder (``/``-separated), its crop's path relative to the
    output folder, and its identity (the folder it is in; ``""`` for photos at the top)."""

    name: str
    output: str

    @property
    def identity(self) -> str:
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""


def check_folders(source: Path, target: Path) -> None:
    """Refuse a missing input folder, and an output folder that is the input, inside it, or holds it."""
    if not source.is_dir():
        raise DataError(f"input folder {source} does not exist", "pass a folder of photos (or of identity folders)")
    if target.exists() and not target.is_dir():
        raise DataError(f"output {target} is a file", "pass a folder for the aligned crops")
    src, dst = source.resolve(), target.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise DataError(f"output folder {target} overlaps the input folder {source}",
                        "write the crops to a folder outside the photos' folder (the photos are never overwritten)")


def list_photos(source: Path, suffix: str) -> list[Photo]:
    """Every photo below ``source`` (hidden files and folders left out), sorted by name, each with its
    crop's name: the photo's name with ``.<suffix>`` for its extension, or the whole name plus ``.<suffix>``
    where two photos of a folder share a stem (``a.jpg`` and ``a.png`` -> ``a.jpg.png``, ``a.png.png``)."""
    names = []
    for folder, subfolders, files in os.walk(source):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        relative = PurePosixPath(Path(folder).relative_to(source).as_posix())
        names += [str(relative / f) if str(relative) != "." else f for f in files
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in PHOTO_SUFFIXES]
    names.sort()
    stems = Counter(os.path.splitext(name)[0] for name in names)
    return [Photo(name, f"{os.path.splitext(name)[0] if stems[os.path.splitext(name)[0]] == 1 else name}.{suffix}")
            for name in names]
