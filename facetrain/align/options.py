"""The command-line options of detection, shared by scripts/align.py and the scripts that take raw photos
with ``--align`` (evaluate.py, extract_features.py, identify.py, make_bin.py)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from facetrain.align.faces import SETTINGS, DetectorSettings
from facetrain.align.photos import PhotoAligner

DETECTORS = ("yunet", "scrfd")


def add_detection_options(parser: argparse.ArgumentParser) -> None:
    """``--detector``, ``--detector-model``, ``--input-size``, ``--min-face``, ``--score-threshold``."""
    parser.add_argument("--detector", choices=DETECTORS, default="yunet", help="yunet (shipped) or scrfd (insightface's)")
    parser.add_argument("--detector-model", type=Path, help="the detector's model file (scrfd: det_10g.onnx)")
    for name, rule in SETTINGS.items():
        parser.add_argument(rule.flag, type=int if rule.integer else float, default=getattr(DetectorSettings, name),
                            help=f"{rule.help} [{rule.low:g}, {rule.high:g}]")


def detector_settings(args: argparse.Namespace) -> DetectorSettings:
    """The settings the options name (a ConfigError for a value out of range)."""
    return DetectorSettings(args.input_size, args.min_face, args.score_threshold)


def add_align_options(parser: argparse.ArgumentParser) -> None:
    """``--align`` and the detection options."""
    parser.add_argument("--align", action="store_true",
                        help="the images are raw photos: find each one's face and crop it as scripts/align.py does")
    add_detection_options(parser)


def photo_aligner(args: argparse.Namespace) -> Optional[PhotoAligner]:
    """The aligner ``--align`` asks for, or None."""
    return PhotoAligner(args.detector, args.detector_model, detector_settings(args)) if args.align else None
