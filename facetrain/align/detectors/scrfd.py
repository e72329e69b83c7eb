"""SCRFD through the ``insightface`` package's own model-zoo class, for users who have its model packs
(``det_10g.onnx`` of ``buffalo_l``: the detector behind the MS1M-RetinaFace and IJB crops). insightface's
``FaceAnalysis`` uses it with threshold 0.5 and NMS 0.4 at 640x640; its five points are in the template's
order (``FaceAnalysis`` hands them to ``norm_crop`` as they come).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from facetrain.align.detectors.base import Detector, ordered
from facetrain.align.faces import DetectorSettings, Face
from facetrain.errors import ConfigError, ModelError

NEEDS_MODEL = ("pass --detector-model PATH/det_10g.onnx (insightface's buffalo_l pack), "
               "or use the shipped detector (--detector yunet)")


class SCRFD(Detector):
    name = "scrfd"
    default_threshold = 0.5

    def __init__(self, settings: DetectorSettings, model: Optional[Path] = None, session: Any = None) -> None:
        """``session``: an ONNX Runtime session of the model (default: one thread, CPU)."""
        super().__init__(settings)
        try:
            from insightface.model_zoo.scrfd import SCRFD as InsightfaceSCRFD
        except ImportError:
            raise ConfigError("the scrfd detector needs the insightface package", "pip install insightface") from None
        if session is None:
            session = _session(model)
        self._net = InsightfaceSCRFD(model_file=None if model is None else str(model), session=session)
        size = (settings.input_size, settings.input_size)
        self._net.prepare(-1, det_thresh=self.threshold, input_size=size)
        self._size = size

    def detect(self, image: np.ndarray) -> list[Face]:
        boxes, points = self._net.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), input_size=self._size)
        if points is None:
            raise ModelError("the SCRFD model gives no five points", "use an SCRFD model with keypoints, e.g. det_10g.onnx")
        return ordered([Face(box[:4].astype(np.float32), kps.astype(np.float32), float(box[4]))
                        for box, kps in zip(boxes, points)])


def _session(model: Optional[Path]) -> Any:
    if model is None:
        raise ConfigError("the scrfd detector needs its model file", NEEDS_MODEL)
    if not Path(model).is_file():
        raise ConfigError(f"SCRFD model {model} does not exist", NEEDS_MODEL)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # one core per worker process
    try:
        return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ModelError(f"ONNX Runtime cannot load {model} ({str(exc).strip().splitlines()[0]})", NEEDS_MODEL) from None
