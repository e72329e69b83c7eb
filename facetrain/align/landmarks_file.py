"""Five points per photo in the IJB ``<set>_name_5pts_score.txt`` layout: ``name x0 y0 x1 y1 ... x4 y4 score``
per line, the name relative to a folder (it may hold spaces: the last eleven fields are the numbers), the
points in the template's order and in the photo's pixels.

Numbers are written with the fewest digits that read back to the same float32, so that re-cropping from
the file gives the very crops of the run that wrote it.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np

from facetrain.align.detectors.base import Detector
from facetrain.align.faces import DetectorSettings, Face
from facetrain.errors import DataError

FIELDS = 11  # ten coordinates and a score


def format_number(value: float) -> str:
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def format_line(name: str, points: np.ndarray, score: float) -> str:
    """One line (without its newline) of the file."""
    return " ".join([name, *(format_number(v) for v in np.asarray(points).reshape(10)), format_number(score)])


def read_landmarks(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    """``name -> (points float32 [5, 2], score)``; a DataError names the first malformed line."""
    hint = "write one 'name x0 y0 x1 y1 x2 y2 x3 y3 x4 y4 score' line per photo (scripts/align.py's landmarks.txt)"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"landmarks file {path} cannot be read ({exc.strerror or exc})", hint) from None
    except UnicodeDecodeError:
        raise DataError(f"landmarks file {path} is not UTF-8 text", hint) from None
    table: dict[str, tuple[np.ndarray, float]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, FIELDS)
        try:
            if len(parts) != FIELDS + 1:
                raise ValueError
            values = np.array([float(v) for v in parts[1:]], np.float32)
            if not np.isfinite(values).all():
                raise ValueError
        except ValueError:
            raise DataError(f"{path}:{number} is not a name followed by ten coordinates and a score", hint) from None
        if parts[0] in table:
            raise DataError(f"{path}:{number} names {parts[0]} a second time", "keep one line per photo")
        table[parts[0]] = (values[:10].reshape(5, 2), float(values[10]))
    if not table:
        raise DataError(f"landmarks file {path} lists no photo", hint)
    return table


class LandmarksFile(Detector):
    """The faces a landmarks file gives: one per listed photo, none for the others. Its faces are cropped
    whatever their size (``min_face`` was applied when the file was made)."""

    name = "landmarks"
    default_threshold = 0.0

    def __init__(self, settings: DetectorSettings, model: Path) -> None:
        super().__init__(settings)
        self.path, self.table = Path(model), read_landmarks(Path(model))
        self.min_face = 0

    def detect(self, image: np.ndarray) -> list[Face]:
        raise TypeError("a landmarks file finds faces by photo name: call faces(image, name)")

    def faces(self, image: np.ndarray, name: str) -> list[Face]:
        if name not in self.table:
            return []
        points, score = self.table[name]
        box = np.concatenate([points.min(axis=0), points.max(axis=0)]).astype(np.float32)
        return [Face(box, points, score)]

    def listed(self) -> list[str]:
        return sorted(self.table)
