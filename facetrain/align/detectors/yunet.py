"""YuNet through OpenCV's ``cv2.FaceDetectorYN``: the default detector (shipped, MIT, about 0.1 MB). It finds
the faces; their five points are then placed by MTCNN's ONet (:mod:`facetrain.align.onet`), whose points
agree with annotated faces about twice as well as YuNet's own (``refine=False`` keeps YuNet's).

YuNet's rows are ``x, y, w, h``, then the person's right eye, left eye, nose tip, right and left mouth
corner, then the score: the person's right eye is the one on the left of the photo, so its five points
are already in the template's order (tests/test_align_detect.py checks this on real photos).
NMS 0.3 and top-k 5000 are the OpenCV Zoo demo's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from facetrain.align.detectors.base import Detector, ordered, scaled_for_detection
from facetrain.align.faces import DetectorSettings, Face
from facetrain.align.model_file import ONET_SHA256, verified_model
from facetrain.align.onet import refine_points, shipped_onet
from facetrain.errors import ModelError

NMS_THRESHOLD = 0.3
TOP_K = 5000


class YuNet(Detector):
    name = "yunet"
    # OpenCV's default is 0.9; on the test photos (tests/data/photos) real faces score 0.86-0.96 at input
    # size 640 and the false detections 0.54-0.68, so 0.8 keeps every face and none of the others
    default_threshold = 0.8

    def __init__(self, settings: DetectorSettings, model: Optional[Path] = None, refine: bool = True) -> None:
        super().__init__(settings)
        self.refine = refine
        if refine:
            shipped_onet()  # a missing or altered weight file fails here, not at the first photo
            self.points_sha256 = ONET_SHA256
        path = verified_model() if model is None else Path(model)
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # not OpenCV 5's notice about DNN targets
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), self.threshold, NMS_THRESHOLD, TOP_K)
        except cv2.error as exc:
            raise ModelError(f"OpenCV cannot load {path} as a YuNet model ({str(exc).strip().splitlines()[-1]})",
                             "pass a YuNet .onnx file (e.g. the OpenCV Zoo's face_detection_yunet_2023mar.onnx)") from None
        finally:
            cv2.utils.logging.setLogLevel(level)

    def detect(self, image: np.ndarray) -> list[Face]:
        small, scale = scaled_for_detection(image, self.settings.input_size)
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._net.detect(bgr)
        if rows is None:
            return []
        faces = []
        for row in rows:
            box = np.concatenate([row[:2], row[:2] + row[2:4]]).reshape(2, 2) / scale
            points = row[4:14].reshape(5, 2) / scale
            faces.append(Face(box.reshape(4).astype(np.float32), points.astype(np.float32), float(row[14])))
        return ordered(refine_points(image, faces) if self.refine else faces)
