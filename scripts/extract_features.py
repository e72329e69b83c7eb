"""Embed face images with a checkpoint's backbone: one feature row per image, in a .npy file.

    python scripts/extract_features.py CHECKPOINT_OR_RUN_DIR --images DIR_OR_LIST --output feats.npy
        [--batch-size 256] [--workers 8] [--device auto] [--flip sum] [--align [DETECTION OPTIONS]]
    python scripts/extract_features.py TEACHER --dataset DATASET_ROOT --output teacher.npy --flip none

``--images`` is a folder (every image below it, sorted by path) or a list file of image paths, one
per line (relative to the list's folder, or absolute; a training list's trailing label is ignored).
Images should be aligned 112x112 faces; other sizes are resized. With ``--align`` they are raw photos: each
one's face is found and cropped as scripts/align.py crops it. ``feats.npy`` holds float32 ``[N, d]`` raw
embeddings (``[N, 2d]`` with ``--flip concat``), and ``feats.txt`` beside it the image of each row.
Unreadable images (and, with ``--align``, photos without a face) are skipped with a warning and left out of both.

``--dataset`` embeds a training set (a RecordIO folder, identity folders or a ``path label`` list file, as
``dataset.root`` names it) without augmentation: row ``i`` is sample ``i`` of the dataset, every row present, no
``.txt``. It is what ``distill.teacher=teacher.npy`` reads (docs/distillation.md); ``--flip none`` embeds the image as
stored, ``sum`` adds its mirror image's embedding.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from facetrain import load_backbone
from facetrain.align.options import add_align_options, photo_aligner
from facetrain.align.photos import photo_inputs
from facetrain.benchmarks.data import open_dataset
from facetrain.cli import run_script, script_parser
from facetrain.data.imagefolder import IMAGE_SUFFIXES
from facetrain.errors import DataError
from facetrain.eval.embed import embed_batches
from facetrain.eval.image_files import ImageFiles, load_images
from facetrain.eval.options import add_embedding_options, embedding_device, parse_embedding_args
from facetrain.runs.run_dir import find_checkpoint


def list_images(source: Path) -> tuple[Path, list[str]]:
    """``(base, names)``: the image files below folder ``source``, or those named by list file ``source``."""
    if source.is_dir():
        names = sorted(str(Path(folder, name).relative_to(source)) for folder, _, files in os.walk(source)
                       for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise DataError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", "pass a folder of face images")
        return source, names
    if not source.is_file():
        raise DataError(f"{source} does not exist", "pass a folder of images or a list file of image paths")
    names = []
    for line in source.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            parts = line.rsplit(None, 1)
            labelled = len(parts) == 2 and parts[1].isdigit() and not (source.parent / line).exists()
            names.append(parts[0] if labelled else line)
    if not names:
        raise DataError(f"list file {source} names no images", "write one image path per line")
    return source.parent, names


def readable_batches(dataset: ImageFiles, batch_size: int, workers: int, kept: list[int]) -> Iterator[torch.Tensor]:
    """The batches without their unreadable images (each warned about); ``kept`` collects the indices."""
    for images, indices, errors in load_images(dataset, batch_size, workers):
        good = [i for i, error in enumerate(errors) if not error]
        for error in filter(None, errors):
            print(f"extract_features: skipping {error}", file=sys.stderr)
        kept.extend(indices[good].tolist())
        if good:
            yield images[good]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("extract_features", __doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file, a run directory (its newest checkpoint) or an ONNX model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a folder of images or a list file of image paths")
    source.add_argument("--dataset", type=Path, help="a training set's root: one row per sample index (a teacher's features)")
    parser.add_argument("--output", type=Path, required=True, help="the .npy file of features (paths go to .txt beside it)")
    add_embedding_options(parser)
    add_align_options(parser)
    args = parse_embedding_args(parser, argv)
    if args.dataset is not None and args.align:
        parser.error("--align crops raw photos, --dataset reads a training set of aligned crops: drop --align")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        device = embedding_device(args.device)
        backbone = load_backbone(find_checkpoint(args.checkpoint), device)  # the model first
        if args.dataset is not None:
            return write_dataset_features(backbone, args, device)
        base, names = list_images(args.images)
        dataset, kept = ImageFiles(base, names, **photo_inputs(photo_aligner(args))), []
        batches = readable_batches(dataset, args.batch_size, args.workers, kept)
        features = embed_batches(backbone, batches, device, args.flip, total=len(names), progress=args.progress)
        if not kept:
            raise DataError(f"none of the {len(names)} images of {args.images} could be read", "check the files")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.output, features)
        paths = args.output.with_suffix(".txt")
        paths.write_text("".join(f"{names[i]}\n" for i in kept))
        skipped = len(names) - len(kept)
        print(f"extract_features: wrote {features.shape[0]} x {features.shape[1]} features to {args.output} and their "
              f"images to {paths}" + (f" ({skipped} unreadable images skipped)" if skipped else ""), file=sys.stderr)

    return run_script("extract_features", work)


def dataset_batches(dataset: torch.utils.data.Dataset, batch_size: int, workers: int) -> Iterator[torch.Tensor]:
    """The dataset's images in index order as uint8 ``[B,H,W,3]`` batches."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    for images, _ in loader:
        yield images.permute(0, 2, 3, 1)


def write_dataset_features(backbone: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    """``--dataset``: the features of every sample of the training set, row ``i`` for index ``i``."""
    if not args.dataset.exists():
        raise DataError(f"--dataset {args.dataset} does not exist", "pass a RecordIO folder, identity folders or a list file")
    dataset = open_dataset(args.dataset, {})
    batches = dataset_batches(dataset, args.batch_size, args.workers)
    features = embed_batches(backbone, batches, device, args.flip, total=len(dataset), progress=args.progress)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, features)
    print(f"extract_features: wrote {features.shape[0]} x {features.shape[1]} features of {args.dataset} (row i: sample i) "
          f"to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
