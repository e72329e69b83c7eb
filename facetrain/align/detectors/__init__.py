"""Face detectors by name: ``yunet`` (shipped, the default), ``scrfd`` (insightface's, with its model file)
and ``landmarks`` (the five points of a landmarks file: no detection)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from facetrain.align.detectors.base import Detector
from facetrain.align.detectors.scrfd import SCRFD
from facetrain.align.detectors.yunet import YuNet
from facetrain.align.faces import DetectorSettings
from facetrain.align.landmarks_file import LandmarksFile
from facetrain.registry import Registry

DETECTORS: Registry[Callable[..., Detector]] = Registry("detector")
for _detector in (YuNet, SCRFD, LandmarksFile):
    DETECTORS.register(_detector.name)(_detector)


def build_detector(name: str = "yunet", settings: Optional[DetectorSettings] = None,
                   model: Optional[Path] = None) -> Detector:
    """Detector ``name`` with ``settings`` (default: :class:`DetectorSettings`'s) and its model file
    (yunet: optional, the shipped one by default; scrfd: required; landmarks: the landmarks file)."""
    factory = DETECTORS.get(name)
    settings = settings or DetectorSettings()
    return factory(settings) if model is None and name == "yunet" else factory(settings, model)


__all__ = ["DETECTORS", "Detector", "build_detector"]
