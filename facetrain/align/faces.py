"""A detected face (box, five points, score) and the settings every detector takes, with their ranges."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np

from facetrain.errors import ConfigError


@dataclass(frozen=True, eq=False)
class Face:
    """One face in photo pixels: ``box`` float32 ``[x1, y1, x2, y2]``, ``points`` float32 ``[5, 2]`` in the
    template's order (left eye, right eye, nose, left and right mouth corner, as seen in the photo) and
    the detector's ``score``."""

    box: np.ndarray
    points: np.ndarray
    score: float

    @property
    def size(self) -> float:
        """The longer side of the box, in photo pixels (what ``min_face`` is compared with)."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2


@dataclass(frozen=True)
class Setting:
    low: float
    high: float
    integer: bool
    example: float
    help: str

    @property
    def flag(self) -> str:
        return "--" + next(name for name, rule in SETTINGS.items() if rule is self).replace("_", "-")


SETTINGS = {
    "input_size": Setting(64, 4096, True, 640, "longest side, in pixels, that photos are scaled down to for detection"),
    "min_face": Setting(1, 100_000, True, 32, "faces whose box is smaller (longer side, photo pixels) are reported, not cropped"),
    "score_threshold": Setting(0.0, 1.0, False, 0.8, "detections scoring lower are ignored (default: the detector's own)"),
}


@dataclass(frozen=True)
class DetectorSettings:
    """How a detector looks at a photo: at ``input_size`` (longest side, never enlarged), keeping faces
    scoring at least ``score_threshold`` (None: the detector's default); faces smaller than ``min_face``
    photo pixels are found but not cropped."""

    input_size: int = 640
    min_face: int = 32
    score_threshold: Optional[float] = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value, rule = getattr(self, item.name), SETTINGS[item.name]
            if value is None and item.name == "score_threshold":
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or (rule.integer and value != int(value)) or not rule.low <= value <= rule.high:
                kind = "an integer" if rule.integer else "a number"
                raise ConfigError(f"detection {item.name}={value} is out of range ({kind} in [{rule.low:g}, {rule.high:g}])",
                                  f"pass e.g. {rule.flag} {rule.example:g}")
