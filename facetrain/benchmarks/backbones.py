"""``benchmark.py backbones``: parameters and forward GFLOPs (one 112x112 image) of the registered backbones and of
any timm models named, as a markdown table (docs/backbones.md's table)."""
from __future__ import annotations

import argparse

from facetrain.backbones import BACKBONES, build_backbone
from facetrain.engine.step_benchmark import forward_flops


def run_backbones(args: argparse.Namespace) -> None:
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
