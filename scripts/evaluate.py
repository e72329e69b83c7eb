"""Evaluate checkpoints on verification sets (LFW, CFP-FP, AgeDB-30, your own pairs) by the field's 10-fold protocol.

    python scripts/evaluate.py CHECKPOINT_OR_RUN_DIR [MORE ...] [--targets lfw cfp_fp agedb_30 --data-root DIR]
        [--pairs PAIRS.txt ... --images DIR] [--json results.json] [--csv results.csv]
        [--cache-dir DIR | --no-cache] [--batch-size 256] [--workers 8] [--device auto] [--flip sum]
        [--align [DETECTION OPTIONS]]

``--targets`` are names of ``<data-root>/<name>.bin`` files or paths to ``.bin`` files; ``--pairs`` are
pair lists over the aligned images in ``--images`` (default: each list's folder): LFW's ``pairs.txt`` or
plain ``path1 path2 same`` lines (:mod:`facetrain.eval.pairs`), named by their file name. With ``--align`` the
pair lists' images are raw photos: each one's face is found and cropped as scripts/align.py crops it.

One checkpoint: a table of its targets (pairs, accuracy +- std, TAR@FAR=1e-3). Several: one markdown
table, a row per checkpoint and a column per target (accuracy, %), as papers lay results out. ``--json``
writes every figure (accuracy, std, best threshold, TAR at FAR 1e-3 and 1e-4, AUC, EER) of every checkpoint,
``--csv`` the table's figures. Features are cached in ``--cache-dir`` (default: the folder of ``--json`` or
``--csv``, none without either), so another run over the same checkpoint and images embeds nothing again.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
from pathlib import Path
from typing import Any, Optional

from facetrain import load_backbone
from facetrain.align.options import add_align_options, photo_aligner
from facetrain.cli import run_script, script_parser
from facetrain.data import resolve_targets
from facetrain.eval.feature_cache import cached_features, checkpoint_digest
from facetrain.eval.options import add_embedding_options, embedding_device, parse_embedding_args
from facetrain.eval.roc import far_key
from facetrain.eval.targets import EmbedSettings, verification_targets
from facetrain.eval.verification import evaluate
from facetrain.runs.run_dir import find_checkpoint

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


def markdown_table(models: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Rows = models, columns = targets, cells = accuracy (%), plus the mean over the targets."""
    targets = list(next(iter(models.values())))
    lines = ["| model | " + " | ".join(targets) + " | mean |", "|---|" + "---:|" * (len(targets) + 1)]
    for model, results in models.items():
        accuracies = [results[t]["accuracy"] for t in targets]
        cells = [percent(a) for a in accuracies] + [percent(sum(accuracies) / len(accuracies))]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, models: dict[str, dict[str, dict[str, Any]]], checkpoints: dict[str, Path]) -> None:
    """A row per model: its checkpoint and, per target, accuracy, std and TAR@FAR=1e-3 (fractions)."""
    targets = list(next(iter(models.values())))
    header = ["model", "checkpoint"] + [f"{t}_{k}" for t in targets for k in ("accuracy", "std", "tar_at_far_1e-3")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for model, results in models.items():
            cells = [(r["accuracy"], r["std"], r["tar_at_far"][far_key(TABLE_FAR)]) for r in (results[t] for t in targets)]
            writer.writerow([model, str(checkpoints[model])] + ["" if v is None else v for c in cells for v in c])


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("evaluate", __doc__)
    parser.add_argument("checkpoints", type=Path, nargs="+", metavar="checkpoint",
                        help="checkpoint files, run directories (their newest checkpoint) or ONNX models")
    parser.add_argument("--targets", nargs="+", default=[], help="names of <data-root>/<name>.bin, or .bin paths")
    parser.add_argument("--data-root", type=Path, default=Path("."), help="folder of the named .bin files")
    parser.add_argument("--pairs", type=Path, nargs="+", default=[], help="pair lists (LFW pairs.txt or 'path1 path2 same')")
    parser.add_argument("--images", type=Path, help="folder the pair lists' images are in (default: each list's folder)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--csv", type=Path, help="also write the results table to this CSV file")
    parser.add_argument("--cache-dir", type=Path, help="folder for cached features (default: that of --json or --csv)")
    parser.add_argument("--no-cache", dest="cache", action="store_false", help="embed every image again")
    add_embedding_options(parser)
    add_align_options(parser)
    args = parse_embedding_args(parser, argv)
    if not args.targets and not args.pairs:
        parser.error("name what to evaluate on: --targets (.bin sets) and/or --pairs (pair lists)")
    if args.images is not None and not args.pairs:
        parser.error("--images goes with --pairs")
    if args.align and not args.pairs:
        parser.error("--align goes with --pairs (.bin sets hold aligned faces)")
    return args


def model_labels(paths: list[Path]) -> dict[str, Path]:
    """A row label per checkpoint argument: the argument as typed (its last parts when those tell them apart)."""
    for depth in (1, 2, 3):
        labels = ["/".join(path.parts[-depth:]) for path in paths]
        if len(set(labels)) == len(labels):
            return dict(zip(labels, paths))
    return {str(path): path for path in paths}


def evaluate_checkpoint(checkpoint: Path, targets: dict[str, Any], settings: EmbedSettings,
                        cache_dir: Optional[Path]) -> dict[str, dict[str, Any]]:
    """Every target's figures for one checkpoint; its backbone is loaded only if some features are not cached."""
    backbone = functools.cache(lambda: load_backbone(checkpoint, settings.device))
    digest, results = checkpoint_digest(checkpoint), {}
    for name, target in targets.items():
        key = {"checkpoint": digest, "flip": settings.flip, **target.key()}
        features = cached_features(cache_dir, key, lambda: target.embed(backbone(), settings))
        results[name] = {"pairs": len(target.issame), **evaluate(features, target.issame)}
    return results


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        device = embedding_device(args.device)
        # the models first: a missing one is the first thing to say
        checkpoints = {label: find_checkpoint(path) for label, path in model_labels(args.checkpoints).items()}
        targets = verification_targets(resolve_targets(args.targets, args.data_root), args.pairs, args.images,
                                       photo_aligner(args))
        settings = EmbedSettings(device, args.batch_size, args.workers, args.flip, args.progress)
        written = next((p.parent for p in (args.json, args.csv) if p is not None), None)
        cache_dir = args.cache_dir or written
        models = {label: evaluate_checkpoint(checkpoint, targets, settings, cache_dir if args.cache else None)
                  for label, checkpoint in checkpoints.items()}
        if len(models) == 1:
            print(format_table(next(iter(models.values()))))
        else:
            print(markdown_table(models))
        if args.json is not None:
            report = {"flip": args.flip, "models": [{"model": label, "checkpoint": str(checkpoints[label]),
                                                      "targets": results} for label, results in models.items()]}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        if args.csv is not None:
            write_csv(args.csv, models, checkpoints)

    return run_script("evaluate", work)


if __name__ == "__main__":
    sys.exit(main())
