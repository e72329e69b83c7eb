"""``scripts/benchmark.py align``: how fast raw photos become aligned crops, per core, and how well the five
points agree with a reference.

Each photo is scaled to ``--side`` pixels (longer side) and JPEG-encoded once; a pass then times, on one core
(one OpenCV and one torch thread; CPU seconds of this process, which other load distorts less than wall
time), decoding + detection + the face choice + the crop; the detectors take turns, and each one's figure is
the median of its turns. Beside facetrain's detector, facenet-pytorch's MTCNN runs the same
passes when it is importable (its defaults: minimum face 20 px, on the whole photo; and on the photo scaled
to facetrain's detection input size); so does YuNet with its own five points (without ONet). ``--side 0``
keeps the photos as they are; ``--seconds 0`` measures agreement only.

Five-point agreement: the mean distance of a detector's points to the reference's, divided by the
reference's eye distance (NME), over the reference's faces that every detector finds; and the same once
each detector's mean offset per point is taken away (measured in the face's frame, along and across its eye
line, in eye distances, and left out for the face it corrects): what remains when a detector puts, say, its
nose tip consistently a little lower than the annotators did (a difference of convention) is its scatter.
The reference is a file in the IJB ``name_5pts_score`` layout, in the photos' own pixels, a line per face (a
photo may have several): annotated points, or another detector's. facenet-pytorch is not a facetrain
dependency: install it in a throw-away environment to compare.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

from facetrain.align.choice import big_enough, central
from facetrain.align.crop import crop
from facetrain.align.detectors import build_detector
from facetrain.align.detectors.yunet import YuNet
from facetrain.align.faces import DetectorSettings, Face
from facetrain.benchmarks.measure import rate
from facetrain.data.images import decode_photo, encode_jpeg

ROUNDS = 5  # speed: the median of this many turns over the detectors, each a fifth of --seconds
PHOTOS = Path(__file__).resolve().parents[2] / "tests" / "data" / "photos"


def photos_at(folder: Path, side: int) -> list[tuple[str, bytes, float]]:
    """``(name, JPEG bytes, scale)`` of each photo of ``folder`` scaled to ``side`` pixels (longer side), quality 90
    (``side`` 0: the photo's own bytes, scale 1)."""
    scaled = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        if side == 0:
            scaled.append((path.name, path.read_bytes(), 1.0))
            continue
        image = decode_photo(path.read_bytes(), str(path))
        ratio = side / max(image.shape[:2])
        size = (round(image.shape[1] * ratio), round(image.shape[0] * ratio))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_CUBIC)
        scaled.append((path.name, encode_jpeg(resized, 90), size[0] / image.shape[1]))
    return scaled


class MTCNNFaces:
    """facenet-pytorch's MTCNN (its defaults), optionally on the photo scaled to ``input_size``, as Faces."""

    def __init__(self, input_size: Optional[int] = None) -> None:
        from facenet_pytorch import MTCNN

        self.net, self.input_size = MTCNN(keep_all=True, device="cpu"), input_size

    def detect(self, image: np.ndarray) -> list[Face]:
        scale = 1.0 if self.input_size is None else min(1.0, self.input_size / max(image.shape[:2]))
        small = image if scale == 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes, scores, points = self.net.detect(small, landmarks=True)
        if boxes is None:
            return []
        return [Face((b / scale).astype(np.float32), (p / scale).astype(np.float32), float(s))
                for b, s, p in zip(boxes, scores, points)]


def read_reference(path: Path) -> dict[str, list[np.ndarray]]:
    """``photo name -> [points [5, 2], ...]`` of a reference file (a line per face)."""
    reference: dict[str, list[np.ndarray]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, *numbers = line.rsplit(None, 11)
            reference.setdefault(name, []).append(np.array(numbers[:10], np.float32).reshape(5, 2))
    return reference


def pipeline(detect: Callable[[np.ndarray], list[Face]], min_face: float) -> Callable[[bytes], int]:
    """One photo from bytes to its aligned crop (1 if it gave one)."""

    def run(data: bytes) -> int:
        image = decode_photo(data)
        faces = big_enough(detect(image), min_face)
        return 1 if faces and crop(image, central(faces, image.shape).points) is not None else 0

    return run


def face_frame_error(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``points - reference`` ``[5, 2]`` in the reference face's frame: along its eye line (left eye to right
    eye) and across it, in eye distances."""
    eye_line = (reference[1] - reference[0]).astype(np.float64)
    distance = float(np.linalg.norm(eye_line))
    cos, sin = eye_line / distance
    return (points - reference).astype(np.float64) @ np.array([[cos, -sin], [sin, cos]]) / distance


def nme_figures(errors: np.ndarray) -> dict[str, Any]:
    """From face-frame errors ``[N, 5, 2]``: the mean point error (NME); the same after taking away each point's
    mean offset over the other faces (None below two faces); the mean offset of each point (along, across)."""
    if not len(errors):
        return {"faces": 0, "nme": None, "nme_offset_removed": None, "mean_offset": None}
    removed = None
    if len(errors) > 1:
        others_mean = (errors.sum(axis=0) - errors) / (len(errors) - 1)
        removed = round(float(np.linalg.norm(errors - others_mean, axis=2).mean()), 4)
    return {"faces": len(errors), "nme": round(float(np.linalg.norm(errors, axis=2).mean()), 4),
            "nme_offset_removed": removed, "mean_offset": np.round(errors.mean(axis=0), 3).tolist()}


def agreement(photos: list[tuple[str, bytes, float]], detectors: dict[str, Any],
              reference: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """Per detector, :func:`nme_figures` over the reference faces every detector finds (its face whose points'
    centre is nearest the reference's, closer than twice the reference's eye distance)."""
    errors: dict[str, list[np.ndarray]] = {name: [] for name in detectors}
    for name, data, ratio in photos:
        if name not in reference:
            continue
        image = decode_photo(data)
        found = {detector: d.detect(image) for detector, d in detectors.items()}
        for points in reference.get(name, []):
            points = points * ratio
            eyes = float(np.linalg.norm(points[0] - points[1]))
            matched = {}
            for detector, faces in found.items():
                best = min(faces, key=lambda f: float(np.linalg.norm(f.points.mean(0) - points.mean(0))), default=None)
                if best is not None and np.linalg.norm(best.points.mean(0) - points.mean(0)) < 2 * eyes:
                    matched[detector] = best
            if len(matched) == len(found):
                for detector, face in matched.items():
                    errors[detector].append(face_frame_error(face.points, points))
    return {name: nme_figures(np.array(values).reshape(-1, 5, 2)) for name, values in errors.items()}


def run_align(args: argparse.Namespace) -> None:
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    photos = photos_at(args.photos, args.side)
    settings = DetectorSettings(input_size=args.input_size)
    detectors: dict[str, Any] = {"facetrain yunet": build_detector("yunet", settings),
                                 "yunet, its own points": YuNet(settings, refine=False)}
    if args.detector_model is not None:
        detectors["facetrain scrfd"] = build_detector("scrfd", settings, args.detector_model)
    try:
        detectors["mtcnn (facenet-pytorch)"] = MTCNNFaces()
        detectors[f"mtcnn at input size {args.input_size}"] = MTCNNFaces(args.input_size)
    except ImportError:
        print("# facenet-pytorch is not installed: MTCNN is left out")
    speeds: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(ROUNDS if args.seconds > 0 else 0):  # in turns, so that changing load hits every detector
        for name, detector in detectors.items():
            run = pipeline(detector.detect, settings.min_face)
            speeds[name].append(rate(lambda run=run: len([run(data) for _, data, _ in photos]), args.seconds / ROUNDS))
    result: dict[str, Any] = {"photos": len(photos), "side": args.side, "input_size": args.input_size,
                              "photos_per_core_second": {k: round(float(np.median(v)), 2) for k, v in speeds.items() if v}}
    if args.reference is not None:
        result["reference"] = str(args.reference)
        result["nme_to_reference"] = agreement(photos, detectors, read_reference(args.reference))
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def add_align_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("align", help="raw photos to aligned crops: photos/s per core, five-point agreement")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="folder of real photos (default: the test photos)")
    parser.add_argument("--side", type=int, default=1000, help="longer side the photos are scaled to (0: as they are)")
    parser.add_argument("--input-size", type=int, default=DetectorSettings.input_size, help="facetrain's detection input size")
    parser.add_argument("--detector-model", type=Path, help="also time facetrain's scrfd detector with this det_10g.onnx")
    parser.add_argument("--reference", type=Path, help="reference points: 'name x0 y0 ... x4 y4 score', a line per face")
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU seconds per measurement (0: agreement only)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.set_defaults(run=run_align)
