"""Turn raw photos into the field's aligned face crops: identity folders (or a flat folder) of photos of any
size and format in, the same tree of 112x112 crops out, ready for dataset=imagefolder or convert_to_rec.py.

    python scripts/align.py IN OUT [--size 112] [--format jpg|png] [--workers N]
        [--detector yunet|scrfd [--detector-model FILE]] [--input-size 640] [--min-face 32] [--score-threshold S]
        [--pick position|model=CHECKPOINT] [--landmarks FILE]

Each photo's face is found with five points (YuNet, shipped; or insightface's SCRFD with ``--detector scrfd
--detector-model det_10g.onnx``) and cropped exactly as insightface's ``norm_crop`` crops it. A photo with
several faces gives the largest face nearest the centre; ``--pick model=CKPT`` gives instead the face most
like the identity's one-face photos (embedded with that checkpoint). Faces smaller than ``--min-face`` are
reported, not cropped.

Beside the crops: ``landmarks.txt`` (IJB's name_5pts_score layout: photo path relative to IN, x0 y0 ... x4 y4
in the photo's pixels, detector score), which ``--landmarks`` takes back to crop again without detecting
(another ``--size``), and ``report.json`` (counts, the face-choice rule, every skipped photo and why).

A second run skips the photos already done (resume after a kill); crops are written atomically and never
into IN. Crops are JPEG, quality 95, by default: what the field's training sets hold, a quarter of a PNG's
size; cropping again always starts from the photos (via landmarks.txt), never from the crops, so nothing is
compressed twice. ``--format png`` keeps them lossless.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from facetrain.align.job import AlignOptions, Likeness, align_folder
from facetrain.align.options import add_detection_options, detector_settings
from facetrain.align.tree import FORMATS
from facetrain.cli import run_script, script_parser
from facetrain.plural import counted


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("align", __doc__)
    parser.add_argument("input", type=Path, help="folder of photos, or of identity folders of photos")
    parser.add_argument("output", type=Path, help="folder for the crops (the same tree), landmarks.txt and report.json")
    parser.add_argument("--size", type=int, default=112, help="crop side: a multiple of 112 (or of 128), as insightface's")
    parser.add_argument("--format", choices=FORMATS, default="jpg", help="jpg (quality 95) or png (lossless)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes, each with its own detector")
    add_detection_options(parser)
    parser.add_argument("--landmarks", type=Path, help="crop the photos this landmarks file lists, by its points (no detection)")
    parser.add_argument("--pick", default="position", help="position (largest face nearest the centre) or model=CHECKPOINT")
    parser.add_argument("--device", default="auto", help="device of --pick's model: auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    if args.landmarks is not None and (args.detector != "yunet" or args.detector_model is not None):
        parser.error("--landmarks crops by the file's points: it takes no --detector or --detector-model")
    if args.pick != "position" and not args.pick.startswith("model="):
        parser.error(f"--pick {args.pick}: pass position or model=CHECKPOINT")
    return args


def likeness(pick: str, device_name: str) -> Optional[Likeness]:
    """The Likeness of ``--pick model=CKPT`` (its backbone loaded at the first embedding), or None."""
    if pick == "position":
        return None
    from facetrain.eval.embed import embed_images
    from facetrain.eval.feature_cache import checkpoint_digest
    from facetrain.eval.options import embedding_device
    from facetrain.inference import load_backbone
    from facetrain.runs.run_dir import find_checkpoint

    checkpoint = find_checkpoint(pick.split("=", 1)[1])
    device = embedding_device(device_name)
    backbone = functools.cache(lambda: load_backbone(checkpoint, device))

    def embed(crops: np.ndarray) -> np.ndarray:
        return embed_images(backbone(), crops, batch_size=len(crops), device=device)

    return Likeness(embed, f"{checkpoint.name} sha256 {checkpoint_digest(checkpoint)}")


def summary(report: dict, seconds: float, output: Path) -> str:
    counts = report["counts"]
    parts = [f"{counts['aligned']} aligned"] + [f"{counts[key]} {key.replace('_', ' ')}" for key in
                                               ("no_face", "too_small", "unreadable", "not_picked") if counts[key]]
    several = f"; {counts['several_faces']} with several faces" if counts["several_faces"] else ""
    return (f"align: {counted(counts['photos'], 'photo')}: {', '.join(parts)}{several}; {seconds:.0f} s; "
            f"crops, landmarks.txt and report.json in {output}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        settings = detector_settings(args)
        detector, model = ("landmarks", args.landmarks) if args.landmarks else (args.detector, args.detector_model)
        options = AlignOptions(detector, model, settings, args.size, args.format, args.workers)
        start = time.perf_counter()
        report = align_folder(args.input, args.output, options, likeness(args.pick, args.device), args.progress)
        print(summary(report, time.perf_counter() - start, args.output), file=sys.stderr)

    return run_script("align", work)


if __name__ == "__main__":
    sys.exit(main())
