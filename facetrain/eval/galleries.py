"""Galleries and probes of face images on disk, for 1:N identification: your own folders, and TinyFace.

* Folders of identities: ``<root>/<identity>/<image>``; the identity is the subfolder's name. A distractor
  folder holds images of nobody in the probe set (any layout below it).
* TinyFace (Cheng et al., 2018), as AdaFace's ``validation_lq/tinyface_helper.py`` evaluates it: ``Probe/``,
  ``Gallery_Match/`` and ``Gallery_Distractor/`` below the root (TinyFace's ``Testing_Set`` or an aligned copy
  of it); the identity of a probe or gallery image is its file name up to the first ``_``; the gallery is the
  matched images plus every distractor; every probe has mates in the gallery.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrain.data.imagefolder import IMAGE_SUFFIXES
from facetrain.errors import DataError

DISTRACTOR = ""  # the identity of a distractor: no folder or TinyFace file name yields it
TINYFACE_FOLDERS = ("Probe", "Gallery_Match", "Gallery_Distractor")


@dataclass
class ImageSet:
    """Image files (``base/<name>``) and the identity of each."""

    base: Path
    names: list[str]
    identities: np.ndarray  # str

    def __add__(self, other: "ImageSet") -> "ImageSet":
        base = Path(os.path.commonpath([self.base, other.base]))
        rebased = [str((s.base / n).relative_to(base)) for s in (self, other) for n in s.names]
        return ImageSet(base, rebased, np.concatenate([self.identities, other.identities]))


def _images_below(folder: Path) -> list[str]:
    return sorted(str(Path(parent, name).relative_to(folder)) for parent, _, files in os.walk(folder)
                  for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES)


def _existing(folder: Path, role: str) -> Path:
    if not folder.is_dir():
        raise DataError(f"{role} folder {folder} does not exist", f"pass the folder of {role} images")
    return folder


def identity_folders(root: Path, role: str) -> ImageSet:
    """The images of ``root/<identity>/``; an identity folder without images, or images outside one, is refused."""
    root = _existing(root, role)
    names, identities = [], []
    loose = [entry.name for entry in sorted(root.iterdir()) if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DataError(f"{root / loose[0]} is not in an identity folder",
                        f"put each {role} image in <{role} folder>/<identity>/")
    for folder in sorted(entry for entry in root.iterdir() if entry.is_dir()):
        found = _images_below(folder)
        if not found:
            raise DataError(f"{role} identity {folder} holds no images", "add its images or remove the folder")
        names += [f"{folder.name}/{name}" for name in found]
        identities += [folder.name] * len(found)
    if not names:
        raise DataError(f"{role} folder {root} holds no identity folders", f"lay it out as <{role} folder>/<identity>/<image>")
    return ImageSet(root, names, np.array(identities))


def distractor_folder(root: Path) -> ImageSet:
    """Every image below ``root``, of nobody (identity :data:`DISTRACTOR`)."""
    names = _images_below(_existing(root, "distractor"))
    if not names:
        raise DataError(f"distractor folder {root} holds no images", "pass a folder of face images")
    return ImageSet(root, names, np.array([DISTRACTOR] * len(names)))


def tinyface(root: Path) -> tuple[ImageSet, ImageSet]:
    """``(probes, gallery)`` of TinyFace's test split below ``root``."""
    missing = [name for name in TINYFACE_FOLDERS if not (root / name).is_dir()]
    if missing:
        raise DataError(f"{root} is not TinyFace's test split (no {', '.join(missing)} folder)",
                        "pass tinyface/Testing_Set, or the folder of its aligned copy")
    probes, matches = (_labelled_by_file_name(root / name) for name in TINYFACE_FOLDERS[:2])
    return probes, matches + distractor_folder(root / TINYFACE_FOLDERS[2])


def _labelled_by_file_name(folder: Path) -> ImageSet:
    names = _images_below(folder)
    if not names:
        raise DataError(f"TinyFace folder {folder} holds no images", "restore it from the TinyFace release")
    identities = [Path(name).name.split("_", 1)[0] for name in names]
    bad = next((name for name, identity in zip(names, identities) if not identity.isdigit()), None)
    if bad is not None:
        raise DataError(f"{folder / bad}: a TinyFace file name starts with its identity number ('12_3.jpg')",
                        "use TinyFace's own file names")
    return ImageSet(folder, names, np.array([str(int(identity)) for identity in identities]))
