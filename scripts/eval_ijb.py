"""IJB-B / IJB-C evaluation of a checkpoint: 1:1 verification (TAR at FAR 1e-6 ... 1e-1) and 1:N
identification (rank-1/5/10, TPIR at FPIR 0.01 and 0.1, per gallery and averaged).

    python scripts/eval_ijb.py CHECKPOINT_OR_RUN_DIR --ijb-root DIR --target IJBC [--protocol both|1v1|1n]
        [--output DIR] [--batch-size 256] [--workers 8] [--device auto] [--flip sum] [--no-detector-score]
        [--no-cache]

``--ijb-root`` is insightface's IJB folder (``loose_crop/`` and ``meta/``), or its parent holding
``IJBB/`` and ``IJBC/``. 1:1 writes ``<target>.json`` (every figure), ``<target>_roc.png``,
``<target>_scores.png`` (positive/negative score histograms) and ``<target>_scores.npy`` (the score of
each pair, in the order of the pair file); 1:N writes ``<target>_1n.json``, ``<target>_cmc.png`` and
``<target>_tpir.png``, to ``--output`` (default ``ijb_results``). With ``--protocol both`` (the default)
a release without the 1:N lists is evaluated 1:1 only, saying so. The image features are kept in
``--output`` (``features_*.npy``): another protocol on the same checkpoint reuses them (they are keyed by the
checkpoint, the images, the landmarks' values, the alignment and ``--flip``).
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
from facetrain.eval.feature_cache import cached_features, checkpoint_digest
from facetrain.eval.identification import metrics_table
from facetrain.eval.ijb import (
    FARS,
    TARGETS,
    IJBResult,
    feature_key,
    image_features,
    read_ijb_meta,
    score_templates,
)
from facetrain.eval.ijb_1n import (
    OneNResult,
    identify_templates,
    one_n_files,
    read_one_n_lists,
)
from facetrain.eval.options import (
    add_embedding_options,
    embedding_device,
    parse_embedding_args,
)
from facetrain.eval.plots import plot_cmc, plot_roc, plot_score_histograms, plot_tpir
from facetrain.eval.roc import far_key
from facetrain.runs.run_dir import find_checkpoint


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


def write_1n(result: OneNResult, out: Path, report: dict) -> list[Path]:
    """``<target>_1n.json``, the CMC and the TPIR-FPIR figure of every gallery."""
    out.mkdir(parents=True, exist_ok=True)
    stem = result.target.lower()
    written = [out / f"{stem}_1n.json"]
    written[0].write_text(json.dumps({**report, "target": result.target, **result.metrics}, indent=2) + "\n")
    written.append(plot_cmc(result.galleries, out / f"{stem}_cmc.png", f"{result.target} 1:N"))
    written.append(plot_tpir(result.galleries, out / f"{stem}_tpir.png", f"{result.target} 1:N"))
    return written


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("eval_ijb", __doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file, a run directory (its newest checkpoint) or an ONNX model")
    parser.add_argument("--ijb-root", type=Path, required=True, help="insightface's IJB folder (loose_crop/, meta/)")
    parser.add_argument("--target", choices=TARGETS, default="IJBC")
    parser.add_argument("--output", type=Path, default=Path("ijb_results"), help="folder for the JSON, PNGs and scores")
    parser.add_argument("--protocol", choices=("both", "1v1", "1n"), default="both",
                        help="1:1 verification, 1:N identification, or both (1:N only where its lists exist)")
    parser.add_argument("--no-detector-score", dest="detector_score", action="store_false",
                        help="do not weight image features by their detector score")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="compute the image features again instead of reusing those in --output")
    add_embedding_options(parser)
    return parse_embedding_args(parser, argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        device = embedding_device(args.device)
        checkpoint = find_checkpoint(args.checkpoint)  # the model first: a missing one is the first thing to say
        meta = read_ijb_meta(args.ijb_root, args.target)
        one_n = args.protocol == "1n" or (args.protocol == "both" and all(p.is_file() for p in one_n_files(meta).values()))
        if args.protocol == "both" and not one_n:
            print(f"eval_ijb: 1:N skipped: {meta.folder / 'meta'} lacks the 1:N lists", file=sys.stderr)
        lists = read_one_n_lists(meta) if one_n else {}
        key = {"checkpoint": checkpoint_digest(checkpoint), "flip": args.flip, **feature_key(meta)}
        features = cached_features(args.output if args.cache else None, key, lambda: image_features(
            load_backbone(checkpoint, device), meta, device, args.batch_size, args.workers, args.flip, args.progress))
        report = {"checkpoint": str(checkpoint), "flip": args.flip, "detector_score": args.detector_score}
        written = []
        if args.protocol != "1n":
            result = score_templates(features, meta, args.detector_score, device)
            print(format_table(result))
            written += write_outputs(result, args.output, report)
        if one_n:
            result_1n = identify_templates(features, meta, lists, args.detector_score, device)
            joined = result_1n.metrics["joined_galleries"]
            named = {**result_1n.metrics["galleries"], "average": result_1n.metrics["average"],
                     **({} if "skipped" in joined else {"joined (insightface)": joined})}
            print(metrics_table(f"{result_1n.target} 1:N", named, "gallery"))
            written += write_1n(result_1n, args.output, report)
        print(f"eval_ijb: wrote {', '.join(p.name for p in written)} to {args.output}", file=sys.stderr)

    return run_script("eval_ijb", work)


if __name__ == "__main__":
    sys.exit(main())
