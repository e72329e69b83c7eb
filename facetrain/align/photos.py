"""Raw photos as a model's input, for the scripts that embed images (``--align``): each photo is decoded
as it is meant to be seen, its face found (the largest face nearest the centre when there are several)
and cropped to 112x112 as scripts/align.py crops it. A photo without a face of at least the minimum size
is an error naming the problem, which each script handles as it handles an unreadable image."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from facetrain.align.choice import big_enough, central
from facetrain.align.crop import crop
from facetrain.align.detectors import Detector, build_detector
from facetrain.align.faces import DetectorSettings
from facetrain.align.model_file import YUNET_SHA256
from facetrain.data.images import decode_photo
from facetrain.files import file_sha256
from facetrain.errors import DataError

NO_FACE_FIX = "leave the photo out, or lower --score-threshold / --min-face"


class PhotoAligner:
    """``prepare`` of :class:`facetrain.eval.image_files.ImageFiles` (with :attr:`decode` as its decoder):
    a raw photo -> the 112x112 crop of its face. Picklable: each DataLoader worker builds its own detector."""

    decode = staticmethod(decode_photo)

    def __init__(self, detector: str = "yunet", model: Optional[Path] = None,
                 settings: DetectorSettings = DetectorSettings()) -> None:
        self.detector_name, self.model, self.settings = detector, model, settings
        self._detector: Optional[Detector] = build_detector(detector, settings, model)  # bad settings fail here

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_detector": None}

    def __call__(self, image: np.ndarray, index: int = 0) -> np.ndarray:
        if self._detector is None:
            self._detector = build_detector(self.detector_name, self.settings, self.model)
        found = self._detector.detect(image)
        faces = big_enough(found, self._detector.min_face)
        if not faces:
            problem = (f"no face is {self._detector.min_face:g} px or larger (the largest is {max(f.size for f in found):.0f} px)"
                       if found else f"no face scores {self._detector.threshold:g} or more")
            raise DataError(problem, NO_FACE_FIX)
        return crop(image, central(faces, image.shape).points)

    def key(self) -> dict[str, Any]:
        """What the crops depend on, for feature caches."""
        detector = self._detector or build_detector(self.detector_name, self.settings, self.model)
        return {"detector": self.detector_name, "model_sha256": YUNET_SHA256 if self.model is None else file_sha256(self.model),
                **detector.points_key(),
                "input_size": self.settings.input_size, "min_face": self.settings.min_face,
                "score_threshold": self.settings.score_threshold, "choice": "position", "size": 112}



def photo_inputs(aligner: Optional[PhotoAligner]) -> dict[str, Any]:
    """The keyword arguments of :class:`ImageFiles` (and ``embed_files``) that make it read raw photos
    through ``aligner``; none without one."""
    return {} if aligner is None else {"prepare": aligner, "decode": aligner.decode}
