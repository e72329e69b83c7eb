"""Contact sheets: people judge cleaning by looking. One PNG per reason; each row is a flagged image (framed red)
beside its identity's most typical images (highest cosine to the centre), or two identities side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from facetrain.data.datasets import FaceDataset
from facetrain.errors import DataError

TILE = 112
TYPICAL = 4  # typical images per identity in a row
ROWS = 8  # rows per sheet


def typical_samples(identity: int, labels: np.ndarray, cosine: np.ndarray, kept: np.ndarray, count: int) -> list[int]:
    """The ``count`` kept samples of ``identity`` nearest its centre."""
    members = np.flatnonzero((labels == identity) & kept)
    return members[np.argsort(-cosine[members], kind="stable")][:count].tolist()


def _tile(dataset: FaceDataset, index: int, flagged: bool = False) -> np.ndarray:
    try:
        image = dataset.load(index)[0]
    except DataError:
        image = np.full((TILE, TILE, 3), 64, np.uint8)
    image = np.asarray(Image.fromarray(image).resize((TILE, TILE)))
    if flagged:
        image = image.copy()
        image[:4], image[-4:], image[:, :4], image[:, -4:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    return image


def write_sheet(path: Path, rows: Sequence[tuple[str, list[np.ndarray]]]) -> Path:
    """``rows`` of ``(caption, tiles)`` tiled left to right, a caption line above each row."""
    width = max(len(tiles) for _, tiles in rows) * TILE
    sheet = Image.new("RGB", (width, len(rows) * (TILE + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (caption, tiles) in enumerate(rows):
        top = row * (TILE + 14)
        draw.text((2, top + 1), caption, fill=(0, 0, 0))
        for column, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile), (column * TILE, top + 14))
    sheet.save(path)
    return path


def sample_rows(dataset: FaceDataset, flagged: np.ndarray, labels: np.ndarray, cosine: np.ndarray,
                kept: np.ndarray) -> list[tuple[str, list[np.ndarray]]]:
    """Rows for sample-level reasons: the flagged image, then its identity's typical images."""
    rows = []
    for index in flagged[:ROWS].tolist():
        typical = typical_samples(int(labels[index]), labels, cosine, kept, TYPICAL)
        caption = f"sample {index}, identity {labels[index]}, cosine {cosine[index]:.2f}"
        rows.append((caption, [_tile(dataset, index, True)] + [_tile(dataset, i) for i in typical]))
    return rows


def pair_rows(dataset: FaceDataset, pairs: tuple[np.ndarray, np.ndarray, np.ndarray], labels: np.ndarray,
              cosine: np.ndarray, kept: np.ndarray) -> list[tuple[str, list[np.ndarray]]]:
    """Rows for identity pairs: typical images of the first identity, then of the second."""
    rows = []
    for a, b, score in list(zip(*pairs))[:ROWS]:
        tiles = [_tile(dataset, i) for i in typical_samples(int(a), labels, cosine, kept, TYPICAL // 2 + 1)]
        tiles += [_tile(dataset, i, True) for i in typical_samples(int(b), labels, cosine, kept, TYPICAL // 2 + 1)]
        rows.append((f"identities {a} and {b}, centre cosine {score:.2f}", tiles))
    return rows
