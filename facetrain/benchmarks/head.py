"""``benchmark.py head``: memory per rank and step time of the classification layer at a given number of classes:
the whole head on one process, the head split over N ranks (model parallel), and Partial FC. Ranks are processes
joined by NCCL on GPUs when there are enough, else by gloo on the CPU (one thread each; step time is then CPU
seconds per rank, which other load on the machine does not distort)."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facetrain.benchmarks.measure import peak_memory, reset_peak_memory, tensor_mib
from facetrain.engine.optim import build_optimizer
from facetrain.heads import Head, build_head
from facetrain.heads.sharded import ShardedHead


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
