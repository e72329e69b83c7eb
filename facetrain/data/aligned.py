"""Raw photos given as training data: dataset=imagefolder trains on aligned face crops, and photos of other
shapes would be squashed to 112x112 without a word. The image headers of a sample of the folder (no pixel is
decoded) tell which it holds: an aligned crop is a square no larger than 4x the training size (112, 224 and
insightface's other crop sizes, or 128 and 256)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from facetrain.errors import DataError

SAMPLE = 200  # images whose headers are read
MOST = 0.5  # more than this fraction of them unaligned stops the run


def header_size(path: str) -> Optional[tuple[int, int]]:
    """``(width, height)`` from the image's header, or None if it cannot be read (the readability check
    reports such files)."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # PIL raises many types for what it cannot parse
        return None


def looks_aligned(width: int, height: int, image_size: int) -> bool:
    return width == height and width <= 4 * image_size


def require_aligned(base: Path, paths: Sequence[str], image_size: int = 112) -> None:
    """A one-line DataError when most of a sample of the images ``base/<path>`` are not aligned crops."""
    step = max(1, len(paths) // SAMPLE)
    sizes = {path: header_size(str(base / path)) for path in paths[::step][:SAMPLE]}
    sizes = {path: size for path, size in sizes.items() if size is not None}
    unaligned = [(path, size) for path, size in sizes.items() if not looks_aligned(*size, image_size)]
    if sizes and len(unaligned) > MOST * len(sizes):
        path, (width, height) = unaligned[0]
        raise DataError(f"{len(unaligned)} of {len(sizes)} sampled images under {base} are not aligned face crops "
                        f"(e.g. {path} is {width}x{height}): raw photos would be squashed to {image_size}x{image_size}",
                        f"crop their faces first: python scripts/align.py {base} <aligned folder>, then "
                        "dataset.root=<aligned folder>; or set dataset.resize_unaligned=true to train on them squashed")
