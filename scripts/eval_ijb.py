"""IJB-B / IJB-C 1:1 verification of a checkpoint: TAR at FAR 1e-6 ... 1e-1, ROC and score histograms.

    python scripts/eval_ijb.py CHECKPOINT_OR_RUN_DIR --ijb-root DIR --target IJBC [--output DIR]
        [--batch-size 256] [--workers 8] [--device auto] [--flip sum] [--no-detector-score]

``--ijb-root`` is insightface's IJB folder (``loose_crop/`` and ``meta/``), or its parent holding
``IJBB/`` and ``IJBC/``. Writes ``<target>.json`` (every figure), ``<target>_roc.png``,
``<target>_scores.png`` (positive/negative score histograms) and ``<target>_scores.npy`` (the score
of each pair, in the order of the pair file) to ``--output`` (default ``ijb_results``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from facetrain import load_backbone
from facetrain.cli import run_script, script_parser
from facetrain.eval.options import add_embedding_options, embedding_device, parse_embedding_args
from facetrain.eval.ijb import FARS, TARGETS, IJBResult, evaluate_ijb, read_ijb_meta
from facetrain.eval.plots import plot_roc, plot_score_histograms
from facetrain.eval.roc import far_key
from facetrain.inference import find_checkpoint


def format_table(result: IJBResult) -> str:
    """TAR (%) at each FAR ('-' where the negative pairs cannot resolve it), under a line of counts."""
    tars = result.metrics["tar_at_far"]
    cells = [(far_key(f), "-" if tars[far_key(f)] is None else f"{100 * tars[far_key(f)]:.2f}") for f in FARS]
    widths = [max(len(a), len(b)) for a, b in cells]
    return "\n".join([f"{result.target}: {result.templates} templates, {len(result.labels)} pairs; TAR (%) at FAR",
                      "  ".join(a.rjust(w) for (a, _), w in zip(cells, widths)),
                      "  ".join(b.rjust(w) for (_, b), w in zip(cells, widths))])


def write_outputs(result: IJBResult, out: Path, report: dict) -> list[Path]:
    """``<target>.json``, ``_scores.npy`` and (with both kinds of pair) ``_roc.png``, ``_scores.png``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = result.target.lower()
    written = [out / f"{stem}.json", out / f"{stem}_scores.npy"]
    written[0].write_text(json.dumps({**report, **result.summary()}, indent=2) + "\n")
    np.save(written[1], result.scores.astype(np.float32))
    if result.curve is not None:
        written.append(plot_roc(result.curve, out / f"{stem}_roc.png", result.target, FARS, result.metrics["auc"]))
        written.append(plot_score_histograms(result.scores, result.labels, out / f"{stem}_scores.png", result.target))
    return written


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("eval_ijb", __doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file or a run directory (its newest checkpoint)")
    parser.add_argument("--ijb-root", type=Path, required=True, help="insightface's IJB folder (loose_crop/, meta/)")
    parser.add_argument("--target", choices=TARGETS, default="IJBC")
    parser.add_argument("--output", type=Path, default=Path("ijb_results"), help="folder for the JSON, PNGs and scores")
    parser.add_argument("--no-detector-score", dest="detector_score", action="store_false",
                        help="do not weight image features by their detector score")
    add_embedding_options(parser)
    return parse_embedding_args(parser, argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        device = embedding_device(args.device)
        meta = read_ijb_meta(args.ijb_root, args.target)
        checkpoint = find_checkpoint(args.checkpoint)
        backbone = load_backbone(checkpoint, device)
        result = evaluate_ijb(backbone, meta, device, args.batch_size, args.workers, args.flip, args.detector_score,
                              args.progress)
        print(format_table(result))
        report = {"checkpoint": str(checkpoint), "flip": args.flip, "detector_score": args.detector_score}
        written = write_outputs(result, args.output, report)
        print(f"eval_ijb: wrote {', '.join(p.name for p in written)} to {args.output}", file=sys.stderr)

    return run_script("eval_ijb", work)


if __name__ == "__main__":
    sys.exit(main())
