"""``benchmark.py data``: how fast the input pipeline feeds a GPU from a dataset folder (a RecordIO folder, identity
folders or a list file): single-core decode speed of each JPEG decoder, one core's dataset speed (read + decode +
augmentation), and DataLoader images/s in total (wall clock) and per worker (per second of the workers' CPU time)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from facetrain.benchmarks.measure import children_cpu_seconds, rate
from facetrain.data.augment import build_augment
from facetrain.data.datasets import FaceDataset, RecordDataset
from facetrain.data.imagefolder import ImageFolderDataset
from facetrain.data.images import DECODERS, simplejpeg
from facetrain.data.prefetch import DevicePrefetcher
from facetrain.data.recordio import unpack_record


def open_dataset(root: Path, augment: dict[str, Any]) -> FaceDataset:
    """The dataset at ``root`` (RecordIO folder, identity folders or list file) with ``augment`` extras."""
    transform = build_augment(**augment)
    if (root / "train.rec").is_file():
        return RecordDataset(root, transform)
    return ImageFolderDataset(root, transform)


def encoded_samples(dataset: FaceDataset, count: int) -> list[bytes]:
    """The stored bytes of the first ``count`` images."""
    if isinstance(dataset, RecordDataset):
        return [unpack_record(dataset.reader.read(int(dataset.keys[i])))[1] for i in range(count)]
    return [Path(dataset.where(i)).read_bytes() for i in range(count)]


def decode_rates(samples: list[bytes], seconds: float) -> dict[str, float]:
    decoders = {name: fn for name, fn in DECODERS.items() if name != "auto" and (name != "simplejpeg" or simplejpeg)}
    return {name: rate(lambda fn=fn: sum(1 for data in samples if fn(data) is not None), seconds)
            for name, fn in decoders.items()}


def gpu_decode_rate(samples: list[bytes], batch_size: int, seconds: float) -> Optional[float]:
    """torchvision's batched nvJPEG decode on the GPU (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    from torchvision.io import decode_jpeg

    batch = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in samples[:batch_size]]

    def work() -> int:
        decode_jpeg(batch, device="cuda")
        torch.cuda.synchronize()
        return len(batch)

    return rate(work, seconds)


def loader_rate(dataset: FaceDataset, workers: int, batch_size: int, batches: int, device: torch.device) -> tuple[float, float]:
    """DataLoader images per wall-clock second and per second of worker CPU time (random order,
    persistent workers, pinned memory, batches on ``device``)."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, replacement=True, num_samples=10**9),
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None, drop_last=True)
    stream = iter(DevicePrefetcher(loader, device))
    for _ in range(max(2, workers)):  # warm-up: every worker has started
        next(stream)
    start, start_cpu = time.perf_counter(), children_cpu_seconds() if workers else time.process_time()
    for _ in range(batches):
        images, _ = next(stream)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    cpu = (children_cpu_seconds() if workers else time.process_time()) - start_cpu
    return batches * batch_size / wall, batches * batch_size / max(cpu, 1e-9)


def run_data(args: argparse.Namespace) -> None:
    augment = dict(parse_value(item) for item in args.augment)
    dataset = open_dataset(args.root, augment)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# {args.root}: {len(dataset)} images, {dataset.num_classes} classes; transform {dataset.transform}; "
          f"batches to {device}")
    samples = encoded_samples(dataset, min(len(dataset), args.samples))
    torch.set_num_threads(1)
    rows = [(f"decode, {name}", None, r) for name, r in decode_rates(samples, args.seconds).items()]
    gpu = gpu_decode_rate(samples, args.batch_size, args.seconds)
    if gpu is not None:
        rows.append((f"decode, torchvision nvJPEG on the GPU, batches of {args.batch_size}", gpu, None))
    indices = np.random.default_rng(0).integers(len(dataset), size=args.samples)
    rows.append(("dataset[i]: read + decode + augment + CHW", None,
                 rate(lambda: sum(1 for i in indices if dataset[int(i)]), args.seconds)))
    for workers in args.workers:
        wall, per_cpu = loader_rate(dataset, workers, args.batch_size, args.batches, device)
        rows.append((f"DataLoader, {workers} workers, batches of {args.batch_size}", wall, per_cpu))
    print("| measurement | images/s (wall clock) | images per CPU-second (per worker) |\n|---|---:|---:|")
    for name, wall, per_cpu in rows:
        print(f"| {name} | {_number(wall)} | {_number(per_cpu)} |")


def _number(value: Optional[float]) -> str:
    return "" if value is None else f"{value:,.0f}"


def parse_value(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as a number or a list of numbers when it is one."""
    key, _, value = item.partition("=")
    numbers = [float(v) for v in value.strip("[]").split(",")]
    return key, numbers if "," in value else numbers[0]


def add_data_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="input-pipeline throughput of a dataset folder")
    parser.add_argument("root", type=Path, help="RecordIO folder, identity folders or list file")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per worker count")
    parser.add_argument("--samples", type=int, default=512, help="images for the single-core measurements")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per single-core measurement")
    parser.add_argument("--augment", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dataset.augment extras, e.g. color_jitter=0.5 crop_scale=0.8,1.0")
    parser.set_defaults(run=run_data)
