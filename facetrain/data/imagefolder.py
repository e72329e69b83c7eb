"""Face images as files: ``root/<identity>/<image>`` folders, or a list file of ``path label`` lines."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from facetrain.data.aligned import require_aligned
from facetrain.data.augment import SampleTransform
from facetrain.data.datasets import DEFAULT_MAX_BAD_FRACTION, FaceDataset
from facetrain.data.readability import SCAN_LIMIT, unreadable_images
from facetrain.errors import DataError

log = logging.getLogger("facetrain")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


class PackedStrings:
    """Many strings in two numpy arrays: no per-string Python objects for forked workers to copy."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode() for s in strings]
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __getitem__(self, index: int) -> str:
        start = int(self._ends[index - 1]) if index else 0
        return self._blob[start : int(self._ends[index])].tobytes().decode()

    def __len__(self) -> int:
        return len(self._ends)


@dataclass
class ImageList:
    """Image paths (relative to ``base`` unless absolute) and their labels."""

    base: Path
    paths: list[str]
    labels: np.ndarray


def scan_image_folder(root: Path) -> ImageList:
    """``root/<identity>/<image>``: identities sorted by name get labels 0..K-1 (empty folders are skipped)."""
    paths: list[str] = []
    labels: list[int] = []
    identities = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    for identity in identities:
        files = sorted(e.name for e in os.scandir(root / identity)
                       if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        if files:
            label = labels[-1] + 1 if labels else 0
            paths += [f"{identity}/{name}" for name in files]
            labels += [label] * len(files)
    if not paths:
        raise DataError(f"{root} holds no images in identity folders",
                        "lay it out as <root>/<identity>/<image>.jpg, or pass a list file of 'path label' lines")
    return ImageList(root, paths, np.asarray(labels, dtype=np.int64))


def read_list_file(path: Path) -> ImageList:
    """``path label`` per line (paths relative to the list file's folder, or absolute); ``#`` comments
    and blank lines are skipped."""
    paths: list[str] = []
    labels: list[int] = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(f"{path}:{line_no} is not 'path label' (label a non-negative integer)",
                                "write one '<image path> <label>' per line")
            paths.append(parts[0])
            labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"list file {path} names no images", "write one '<image path> <label>' per line")
    return ImageList(path.parent, paths, np.asarray(labels, dtype=np.int64))


def list_images(root: str | os.PathLike) -> ImageList:
    """The images of an identity-folder tree or of a list file."""
    root = Path(root)
    if root.is_file():
        return read_list_file(root)
    if root.is_dir():
        return scan_image_folder(root)
    raise DataError(f"dataset root {root} does not exist",
                    "set dataset.root=<folder of identity folders, or a list file of 'path label' lines>")


def without_unreadable(images: ImageList, max_bad_fraction: float) -> ImageList:
    """``images`` checked at start (folders of up to :data:`SCAN_LIMIT` images; cached): unreadable files up
    to ``max_bad_fraction`` of them are left out with a warning naming each, more are refused in one line
    naming them all (larger folders skip unreadable files as they meet them, see :class:`FaceDataset`)."""
    if len(images.paths) > SCAN_LIMIT:
        return images
    files = [str(images.base / path) for path in images.paths]
    bad = set(unreadable_images(files, str(images.base.resolve())))
    if not bad:
        return images
    shown = ", ".join(sorted(bad)[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    if len(bad) > max_bad_fraction * len(files):
        raise DataError(f"{len(bad)} of {len(files)} images under {images.base} cannot be read: {shown}",
                        "delete or replace them, or raise dataset.max_bad_fraction to train without them")
    log.warning(f"warning: leaving out {len(bad)} unreadable images of {len(files)}: {shown}")
    keep = [i for i, file in enumerate(files) if file not in bad]
    return ImageList(images.base, [images.paths[i] for i in keep], images.labels[keep])


class ImageFolderDataset(FaceDataset):
    """Images read from files (see :func:`list_images`); ``num_classes`` is the largest label + 1."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Optional[SampleTransform] = None,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        image_size: int = 112,
        resize_unaligned: bool = False,
    ) -> None:
        """Raw photos (mostly not squares) are refused unless ``resize_unaligned`` (:mod:`facetrain.data.aligned`)."""
        images = list_images(root)
        if not resize_unaligned:
            require_aligned(images.base, images.paths, image_size)
        images = without_unreadable(images, max_bad_fraction)
        self.root = images.base
        self.paths, self.labels = PackedStrings(images.paths), images.labels
        super().__init__(transform, max_bad_fraction, image_size)
        self.num_classes = int(self.labels.max()) + 1

    def label_of(self, index: int) -> int:
        return int(self.labels[index])

    def where(self, index: int) -> str:
        return str(self.root / self.paths[index])

    def load(self, index: int) -> tuple[np.ndarray, int]:
        try:
            data = Path(self.where(index)).read_bytes()
        except OSError as exc:
            raise DataError(f"{self.where(index)} cannot be read ({exc.strerror})", "check the file") from None
        return self.decode(data, index), int(self.labels[index])

    def __len__(self) -> int:
        return len(self.labels)
