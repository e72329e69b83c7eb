"""Benchmarks, one subcommand each:

    python scripts/benchmark.py data ROOT [--workers 1 2 4] [--batch-size 128] [--augment KEY=VALUE ...]
    python scripts/benchmark.py head [--num-classes 2000000] [--world-size 1 2 4 8] [--sample-rate 0.1]
    python scripts/benchmark.py ijb [--backbone r100] [--images 469375 --templates 23124 --pairs 15658489]
    python scripts/benchmark.py train [--data synthetic|real] [--warmup 5] [--steps 20] [HYDRA OVERRIDES ...]
    python scripts/benchmark.py backbones [NAMES ...] [--timm MODEL ...] [--embedding-size 512]
    python scripts/benchmark.py align [--photos DIR] [--side 1000] [--reference POINTS.txt]

``data``: how fast the input pipeline feeds a GPU from a dataset folder (a RecordIO folder, identity
folders or a list file): single-core decode speed of each JPEG decoder, one core's dataset speed
(read + decode + augmentation), and DataLoader images/s in total (wall clock) and per worker (per
second of the workers' CPU time, which other load on the machine does not distort).

``head``: memory per rank and step time of the classification layer at a given number of classes: the
whole head on one process, the head split over N ranks (model parallel), and Partial FC. Ranks are
processes joined by NCCL on GPUs when there are enough, else by gloo on the CPU (one thread each; step
time is then CPU seconds per rank, which other load on the machine does not distort).

``ijb``: the stages of an IJB 1:1 evaluation at IJB-C's scale (random features, templates and
pairs; synthetic loose crops): alignment per core, embedding images/s on the GPU (or CPU), and the
seconds of template pooling, pair scoring and the ROC.

``train``: the real training step (``Trainer.train_step``: device-side flip and normalisation,
backbone, head, loss, backward, optimizer, schedule) of the config that ``train.py`` would compose
from the same overrides, on random in-memory batches (``--data synthetic``, the default) or on the
dataset through the trainer's DataLoader (``--data real``). Prints JSON: images/s, ms per step
(median and spread), data wait vs compute, peak memory, and achieved TFLOP/s and MFU against the
GPU's peak (``--peak-tflops`` for other devices).

``backbones``: parameters and forward GFLOPs (one 112x112 image) of the registered backbones and of
any timm models named, as a markdown table (the README's backbone table).

``align``: raw photos to aligned crops, photos per core-second, beside facenet-pytorch's MTCNN, and the
five points' agreement with a reference (:mod:`facetrain.align.benchmark`).

A new subcommand is a function ``add_<name>_command(subparsers)`` that sets ``run=`` on its parser,
listed in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py sets it, before torch is imported

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader, RandomSampler

from facetrain.align.benchmark import add_align_command
from facetrain.cli import compose_train_config, describe_error, run_script, script_parser
from facetrain.data import TrainData, build_train_data
from facetrain.data.augment import build_augment
from facetrain.data.datasets import FaceDataset, RecordDataset
from facetrain.data.imagefolder import ImageFolderDataset
from facetrain.data.images import DECODERS, simplejpeg
from facetrain.data.prefetch import DevicePrefetcher
from facetrain.data.recordio import unpack_record
from facetrain.engine.distributed import cleanup, init_distributed
from facetrain.engine.optim import build_optimizer
from facetrain.engine.step_benchmark import (RandomFaces, forward_flops, in_memory_batches, loader_batches,
                                             time_training)
from facetrain.config_checks import check_config
from facetrain.errors import ConfigError
from facetrain.heads import Head, build_head
from facetrain.heads.sharded import ShardedHead
from facetrain.train import build_trainer, hparams, seed_everything, select_device

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ---- data -------------------------------------------------------------------------------------------
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


def rate(work: Callable[[], int], seconds: float, clock: Callable[[], float] = time.process_time) -> float:
    """Items per second of ``work()`` (returns the items it did), repeated for about ``seconds`` of
    ``clock``: by default this process's CPU time, so other load on the machine does not count."""
    work()  # warm-up
    done, start = 0, clock()
    while clock() - start < seconds:
        done += work()
    return done / (clock() - start)


def children_cpu_seconds() -> float:
    """CPU seconds used so far by this process's live children, e.g. DataLoader workers (Linux)."""
    ticks, me = 0, str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me:  # ppid, then utime and stime at 11 and 12
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


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


# ---- head -------------------------------------------------------------------------------------------
def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_memory(device: torch.device) -> float:
    """Forget the peak so far; returns the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
    return resident_mib("VmRSS")


def peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resident_mib("VmHWM")


def tensor_mib(tensors: list[torch.Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def head_worker(rank: int, world_size: int, init_file: str, layout: str, args: argparse.Namespace, out: str) -> None:
    """Time ``args.steps`` training steps of one rank's head (forward, backward, SGD step) and write its figures."""
    torch.set_num_threads(1)
    cuda = torch.cuda.device_count() >= world_size
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if layout != "full":
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world_size, **({"device_id": device} if cuda else {}))
    before = reset_peak_memory(device)

    def build(num_classes: int) -> Head:
        return build_head(args.loss, args.embedding_size, num_classes)

    sample_rate = args.sample_rate if layout == "partial_fc" else 1.0
    head = (build(args.num_classes) if layout == "full" else ShardedHead(build, args.num_classes, sample_rate)).to(device)
    optimizer = build_optimizer(head.parameters(), "sgd", fused=cuda, lr=0.1, weight_decay=5e-4, momentum=0.9,
                                nesterov=False)
    generator = torch.Generator(device).manual_seed(rank)
    batch = args.batch_size // world_size
    embeddings = torch.randn(batch, args.embedding_size, device=device, generator=generator).requires_grad_(True)
    labels = torch.randint(0, args.num_classes, (batch,), device=device, generator=generator)
    cpu, wall = [], []
    for _ in range(args.warmup + args.steps):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        head(embeddings, labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    state = [*head.parameters(), *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))]
    result = {"rank": rank, "classes": head.count if layout != "full" else args.num_classes,
              "state_mib": tensor_mib(state), "peak_mib": peak_memory(device) - before,
              "cpu_s": float(np.median(cpu[args.warmup:])), "wall_s": float(np.median(wall[args.warmup:])),
              "device": str(device)}
    Path(out, f"{layout}_{world_size}_{rank}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


def run_head_layout(layout: str, world_size: int, args: argparse.Namespace, out: str) -> dict[str, Any]:
    """Run one layout on ``world_size`` ranks; the slowest and largest rank's figures."""
    cuda = torch.cuda.device_count() >= world_size
    mp.start_processes(head_worker, args=(world_size, f"{out}/init_{layout}_{world_size}", layout, args, out),
                       nprocs=world_size, start_method="spawn" if cuda else "fork")
    ranks = [json.loads(Path(out, f"{layout}_{world_size}_{r}.json").read_text()) for r in range(world_size)]
    return {key: max(r[key] for r in ranks) for key in ("classes", "state_mib", "peak_mib", "cpu_s", "wall_s")} | {
        "device": ranks[0]["device"]}


def run_head(args: argparse.Namespace) -> None:
    label = {"full": "whole head, one process", "sharded": "model parallel",
             "partial_fc": f"Partial FC, sample_rate {args.sample_rate}"}
    print(f"# {args.loss} head, {args.num_classes:,} classes x {args.embedding_size}, global batch {args.batch_size}, "
          f"SGD with momentum; median of {args.steps} steps after {args.warmup} warm-up")
    print("| layout | ranks | classes per rank | weight + optimizer state per rank (MiB) | peak per rank (MiB) "
          "| step, CPU s per rank | step, wall s | device |\n|---|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as out:
        runs = [("full", 1)] if args.full else []
        runs += [(layout, w) for w in args.world_size for layout in ("sharded", "partial_fc")]
        for layout, world_size in runs:
            r = run_head_layout(layout, world_size, args, out)
            print(f"| {label[layout]} | {world_size} | {r['classes']:,} | {r['state_mib']:,.1f} | {r['peak_mib']:,.0f} "
                  f"| {r['cpu_s']:.3f} | {r['wall_s']:.3f} | {r['device']} |", flush=True)


def add_head_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("head", help="memory and step time of whole, model-parallel and Partial FC heads")
    parser.add_argument("--num-classes", type=int, default=2_000_000)
    parser.add_argument("--world-size", type=int, nargs="+", default=[1, 2, 4, 8], help="ranks to split the head over")
    parser.add_argument("--sample-rate", type=float, default=0.1, help="Partial FC's fraction of classes per step")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch, split over the ranks")
    parser.add_argument("--loss", default="arcface", help="registered head")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-full", dest="full", action="store_false", help="skip the whole head on one process")
    parser.set_defaults(run=run_head)


# ---- ijb --------------------------------------------------------------------------------------------
def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    """``(work(), wall-clock seconds)``, waiting for the GPU."""
    start = time.perf_counter()
    result = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def loose_crop_jpegs(count: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    """Synthetic faces placed in 250x250 loose crops by random similarity transforms, and their landmarks."""
    import cv2

    from facetrain.data.images import encode_jpeg
    from facetrain.data.synthetic_faces import render_face, sample_identity
    from facetrain.align import ARCFACE_DST

    rng = np.random.default_rng(seed)
    jpegs, landmarks = [], []
    for _ in range(count):
        scale, angle = rng.uniform(1.2, 1.6), rng.uniform(-0.4, 0.4)
        matrix = np.array([[scale * np.cos(angle), -scale * np.sin(angle), rng.uniform(30, 60)],
                           [scale * np.sin(angle), scale * np.cos(angle), rng.uniform(30, 60)]])
        jpegs.append(encode_jpeg(cv2.warpAffine(render_face(sample_identity(rng), rng), matrix, (250, 250))))
        landmarks.append(ARCFACE_DST @ matrix[:, :2].T + matrix[:, 2])
    return jpegs, np.stack(landmarks)


def run_ijb(args: argparse.Namespace) -> None:
    from facetrain.backbones import build_backbone
    from facetrain.data.images import decode_image
    from facetrain.eval.embed import embed_batches
    from facetrain.align import crop
    from facetrain.eval.ijb import FARS, pair_scores, template_features
    from facetrain.eval.roc import roc, roc_metrics

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# IJB-scale evaluation on {device}: {args.images:,} images, {args.templates:,} templates, "
          f"{args.pairs:,} pairs, {args.dim}-d features")
    rows = []
    jpegs, landmarks = loose_crop_jpegs(64)
    torch.set_num_threads(1)
    rows.append(("align: decode a 250x250 loose-crop JPEG + 5-point similarity warp (one core)", "images/CPU-s",
                 rate(lambda: sum(1 for j, lm in zip(jpegs, landmarks) if crop(decode_image(j), lm) is not None),
                      args.seconds)))
    torch.set_num_threads(os.cpu_count() or 1)
    backbone = build_backbone(args.backbone, args.dim).to(device).eval()
    batch = np.zeros((args.batch_size, 112, 112, 3), np.uint8)
    embed_batches(backbone, [batch], device)  # warm-up
    _, seconds = timed(lambda: embed_batches(backbone, [batch] * args.batches, device))
    rows.append((f"embed: {args.backbone} fp32, image + flip, batches of {args.batch_size}", "images/s",
                 args.batches * args.batch_size / seconds))

    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.images, args.dim), dtype=np.float32)
    templates = rng.integers(0, args.templates, args.images)
    medias = rng.integers(0, args.images // 4, args.images)
    pairs = rng.integers(0, args.templates, (args.pairs, 2))
    labels = rng.random(args.pairs) < 0.00125
    (ids, pooled), seconds = timed(lambda: template_features(features, templates, medias, device))
    rows.append(("templates: pool images per media, then per template, L2-normalise", "s", seconds))
    scores, seconds = timed(lambda: pair_scores(ids, pooled, pairs))
    rows.append(("scores: cosine of every template pair (float64)", "s", seconds))
    _, seconds = timed(lambda: roc_metrics(roc(scores, labels), FARS))
    rows.append(("ROC, TAR at 6 FARs, AUC, EER", "s", seconds))
    rows.append((f"1:N: {args.probes:,} probe templates in galleries of {' and '.join(f'{g:,}' for g in args.galleries)} "
                 "(ranks, TPIR at FPIR, both galleries joined)", "s", timed(lambda: identify_random(pooled, args))[1]))
    print("| measurement | unit | value |\n|---|---|---:|")
    for name, unit, value in rows:
        print(f"| {name} | {unit} | {value:,.1f} |")


def identify_random(pooled: torch.Tensor, args: argparse.Namespace) -> dict:
    """IJB 1:N on random templates: each gallery enrols distinct subjects, probes are of any of them."""
    from facetrain.eval.ijb_1n import identify

    rng = np.random.default_rng(1)
    rows = rng.permutation(len(pooled))
    galleries, start = {}, 0
    for number, size in enumerate(args.galleries):
        galleries[f"G{number + 1}"] = (pooled[rows[start:start + size]], np.arange(start, start + size))
        start += size
    probes = (pooled[rng.integers(0, len(pooled), args.probes)], rng.integers(0, start, args.probes))
    return identify(probes, galleries)[1]


def add_ijb_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ijb", help="IJB 1:1 and 1:N stages at full scale on random data")
    parser.add_argument("--images", type=int, default=469_375, help="IJB-C: 469,375 images")
    parser.add_argument("--templates", type=int, default=23_124, help="IJB-C: 23,124 templates")
    parser.add_argument("--pairs", type=int, default=15_658_489, help="IJB-C: 15,658,489 template pairs")
    parser.add_argument("--probes", type=int, default=19_593, help="IJB-C 1:N: 19,593 mixed probe templates")
    parser.add_argument("--galleries", type=int, nargs=2, default=[1_772, 1_759], help="IJB-C 1:N: G1 and G2 templates")
    parser.add_argument("--dim", type=int, default=512, help="embedding size")
    parser.add_argument("--backbone", default="r100", help="backbone timed in the embed step")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10, help="timed embed batches")
    parser.add_argument("--seconds", type=float, default=2.0, help="time of the single-core alignment measurement")
    parser.set_defaults(run=run_ijb)


# ---- train ------------------------------------------------------------------------------------------
def run_train(args: argparse.Namespace) -> None:
    try:
        cfg = compose_train_config(args.overrides, CONFIGS)
        check_config(cfg)
        dist = init_distributed()
        seed_everything(cfg.seed + dist.rank)
        device = select_device(cfg.trainer.device.value, dist.local_rank)
        if args.data == "real":
            data = build_train_data(cfg.dataset.name, **hparams(cfg.dataset))
        else:
            classes = cfg.dataset.num_classes or build_train_data(cfg.dataset.name, **hparams(cfg.dataset)).num_classes
            data = TrainData(RandomFaces(args.pool * cfg.trainer.batch_size * dist.world_size, classes), classes, Path())
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(describe_error(exc)) from None
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, data, Path(run_dir), dist, device, evaluate=False)
        batches = (loader_batches(trainer) if args.data == "real"
                   else in_memory_batches(data.dataset, cfg.trainer.batch_size, args.pool, device))
        result = time_training(trainer, batches, args.warmup, args.steps, args.peak_tflops)
    if dist.is_main:
        print(json.dumps({"backbone": cfg.backbone.name, "loss": cfg.loss.name, "data": args.data,
                          "overrides": args.overrides, **result}, indent=2))
    cleanup()


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="speed of the real training step (JSON)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides, as for train.py")
    parser.add_argument("--data", choices=["synthetic", "real"], default="synthetic",
                        help="random in-memory batches, or the dataset through the trainer's DataLoader")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--pool", type=int, default=4, help="distinct in-memory batches (--data synthetic)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for MFU (default: known GPUs' datasheet peak; CPU: none)")
    parser.set_defaults(run=run_train)


# ---- backbones --------------------------------------------------------------------------------------
def run_backbones(args: argparse.Namespace) -> None:
    from facetrain.backbones import BACKBONES, build_backbone

    names = args.names or [name for name in BACKBONES.names() if name != "timm"]
    rows = [(name, build_backbone(name, args.embedding_size)) for name in names]
    rows += [(f"timm {model}", build_backbone("timm", args.embedding_size, model=model)) for model in args.timm]
    print(f"| backbone | parameters (M) | forward GFLOPs at 112x112 (embedding {args.embedding_size}) |\n|---|---:|---:|")
    for name, model in rows:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {params:.1f} | {forward_flops(model) / 1e9:.2f} |", flush=True)


def add_backbones_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("backbones", help="parameters and forward FLOPs of registered backbones")
    parser.add_argument("names", nargs="*", help="registered backbones (default: all but timm)")
    parser.add_argument("--timm", nargs="*", default=[], metavar="MODEL", help="timm models to list too")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.set_defaults(run=run_backbones)


# ---- entry ------------------------------------------------------------------------------------------
COMMANDS = [add_data_command, add_head_command, add_ijb_command, add_train_command, add_backbones_command,
            functools.partial(add_align_command, rate=rate)]


def main(argv: Optional[list[str]] = None) -> int:
    parser = script_parser("benchmark", __doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    args = parser.parse_args(argv)
    return run_script("benchmark", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
