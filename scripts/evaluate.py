"""Evaluate a checkpoint on verification sets (LFW, CFP-FP, AgeDB-30, ...) by the field's 10-fold protocol.

    python scripts/evaluate.py CHECKPOINT_OR_RUN_DIR --targets lfw cfp_fp agedb_30 --data-root DIR
        [--json results.json] [--batch-size 256] [--device auto] [--flip sum]

Targets are names of ``<data-root>/<name>.bin`` files or paths to ``.bin`` files. Prints a table
(target, pairs, accuracy +- std, TAR@FAR=1e-3) and, with ``--json``, writes every figure
(accuracy, std, best threshold, TAR at FAR 1e-3 and 1e-4, AUC, EER). Training's periodic
verification runs the same code (:class:`facetrain.eval.VerificationCallback`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from facetrain import load_backbone
from facetrain.cli import run_script, script_parser
from facetrain.data import resolve_targets
from facetrain.eval import VerificationCallback
from facetrain.eval.options import add_embedding_options, embedding_device, parse_embedding_args
from facetrain.eval.roc import far_key
from facetrain.inference import find_checkpoint

TABLE_FAR = 1e-3


def percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per target: pairs, accuracy +- std and TAR@FAR=1e-3, in percent."""
    tar = f"TAR@FAR={far_key(TABLE_FAR)} (%)"
    rows = [("target", "pairs", "accuracy (%)", tar)]
    rows += [(name, str(r["pairs"]), f"{percent(r['accuracy'])} +- {percent(r['std'])}",
              percent(r["tar_at_far"][far_key(TABLE_FAR)])) for name, r in results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(f"{row[0]:<{widths[0]}}  " + "  ".join(f"{cell:>{w}}" for cell, w in zip(row[1:], widths[1:]))
                     for row in rows)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("evaluate", __doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file or a run directory (its newest checkpoint)")
    parser.add_argument("--targets", nargs="+", required=True, help="names of <data-root>/<name>.bin, or .bin paths")
    parser.add_argument("--data-root", type=Path, default=Path("."), help="folder of the named .bin files")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    add_embedding_options(parser, workers=False)
    return parse_embedding_args(parser, argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        device = embedding_device(args.device)
        targets = resolve_targets(args.targets, args.data_root)
        evaluator = VerificationCallback(targets, device, args.batch_size, args.flip, progress=args.progress)
        checkpoint = find_checkpoint(args.checkpoint)
        results = evaluator(load_backbone(checkpoint, device))
        print(format_table(results))
        if args.json is not None:
            report = {"checkpoint": str(checkpoint), "flip": args.flip, "targets": results}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    return run_script("evaluate", work)


if __name__ == "__main__":
    sys.exit(main())
