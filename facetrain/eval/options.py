"""The command-line options every script that embeds images shares, and their checks."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from facetrain.cpu_memory import reuse_freed_memory
from facetrain.eval.embed import FLIP_MODES
from facetrain.eval.image_files import default_workers
from facetrain.inference import resolve_device


def add_embedding_options(parser: argparse.ArgumentParser, workers: bool = True) -> None:
    """``--batch-size``, ``--workers`` (when the script loads image files), ``--device``, ``--flip``, ``--no-progress``."""
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    if workers:
        parser.add_argument("--workers", type=int, default=default_workers(), help="image loading processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--flip", choices=FLIP_MODES, default="sum", help="combine each image with its mirror image")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def parse_embedding_args(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, refusing a batch size below 1 or a negative number of workers."""
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if getattr(args, "workers", 0) < 0:
        parser.error("--workers must be at least 0")
    return args


def embedding_device(kind: str) -> torch.device:
    """The device ``--device`` names; on the CPU, malloc keeps the memory of one batch's activations for
    the next (:mod:`facetrain.cpu_memory`) instead of page-faulting it in again."""
    device = resolve_device(kind)
    if device.type == "cpu":
        reuse_freed_memory()
    return device
