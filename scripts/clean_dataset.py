"""Find the noise in a training set: exact duplicates, outliers within an identity, identities that are one
person, and overlap with evaluation data; write a report and the lists that train on the rest.

    python scripts/clean_dataset.py DATASET --model CHECKPOINT --output CLEAN_DIR
        [--eval-bin lfw.bin ...] [--eval-pairs pairs.txt IMAGES] [--eval-gallery GALLERY ...] [--remove-overlap]
        [--merge --rec] [--outlier-degrees 75] [--merge-cosine 0.4] [--overlap-cosine 0.4] [--no-duplicates]
        [--no-outliers] [--no-merges] [--no-overlap] [--no-subcentres] [--batch-size 256] [--workers N] [--device auto]

DATASET is a RecordIO folder or identity folders; CHECKPOINT anything facetrain.load_backbone reads (a sub-center
ArcFace checkpoint's dominant sub-centres judge the outliers, as insightface's drop.py does). CLEAN_DIR receives
report.json, report.md, a contact sheet per reason (sheet_<reason>.png), exclude.txt and include.txt (train with
dataset.exclude=CLEAN_DIR/exclude.txt) and, with --rec, a new RecordIO in CLEAN_DIR/rec. Features are computed
once and cached in CLEAN_DIR/features: running again with other thresholds costs no pass. GALLERY holds one folder
of aligned crops per identity (``<identity>/<image>``, as identify.py's --gallery); each identity is compared by the
mean of its normalised embeddings. docs/noisy_data.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from facetrain.cli import run_script, script_parser
from facetrain.curation.clean import DEFAULT_MERGE_COSINE, CleanOptions, find_noise
from facetrain.curation.identities import DEFAULT_OUTLIER_DEGREES
from facetrain.curation.overlap import DEFAULT_OVERLAP_COSINE
from facetrain.curation.report import write_outputs
from facetrain.eval.options import add_embedding_options, embedding_device, parse_embedding_args


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("clean_dataset", __doc__)
    parser.add_argument("dataset", type=Path, help="a RecordIO folder or identity folders")
    parser.add_argument("--model", type=Path, required=True, help="a checkpoint, run directory or weight file")
    parser.add_argument("--output", type=Path, required=True, help="the folder for the report and the lists")
    parser.add_argument("--eval-bin", type=Path, action="append", default=[], help="a verification .bin (repeatable)")
    parser.add_argument("--eval-pairs", type=Path, nargs=2, action="append", default=[], metavar=("LIST", "IMAGES"),
                        help="a pair list and the folder of its images (repeatable)")
    parser.add_argument("--eval-gallery", type=Path, action="append", default=[], metavar="GALLERY",
                        help="a gallery of aligned crops, GALLERY/<identity>/<image> (repeatable)")
    parser.add_argument("--outlier-degrees", type=float, default=DEFAULT_OUTLIER_DEGREES,
                        help="outliers: farther than this angle from the identity's centre (drop.py: 75)")
    parser.add_argument("--merge-cosine", type=float, default=DEFAULT_MERGE_COSINE,
                        help="one person: identity centres above this cosine")
    parser.add_argument("--overlap-cosine", type=float, default=DEFAULT_OVERLAP_COSINE,
                        help="overlap: a centre above this cosine to an evaluation image or a gallery identity's centre "
                             "(insightface: 0.4)")
    for check in ("duplicates", "outliers", "merges", "overlap"):
        parser.add_argument(f"--no-{check}", dest=check, action="store_false", help=f"skip the {check} check")
    parser.add_argument("--no-subcentres", dest="subcentres", action="store_false",
                        help="judge outliers by the mean embedding even for a sub-center ArcFace checkpoint")
    parser.add_argument("--merge", action="store_true", help="merge the identities found to be one person (needs --rec)")
    parser.add_argument("--remove-overlap", action="store_true", help="exclude identities that overlap evaluation data")
    parser.add_argument("--rec", action="store_true", help="also write the cleaned set as a RecordIO in OUTPUT/rec")
    add_embedding_options(parser)
    parser.set_defaults(flip="none")  # drop.py embeds the image alone
    return parse_embedding_args(parser, argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        options = CleanOptions(
            dataset=args.dataset, model=args.model, output=args.output, duplicates=args.duplicates,
            outliers=args.outliers, merges=args.merges, overlap=args.overlap, outlier_degrees=args.outlier_degrees,
            merge_cosine=args.merge_cosine, overlap_cosine=args.overlap_cosine, subcentres=args.subcentres,
            eval_bins=args.eval_bin, eval_pairs=[tuple(pair) for pair in args.eval_pairs],
            eval_galleries=args.eval_gallery, merge=args.merge,
            remove_overlap=args.remove_overlap, rec=args.rec, device=embedding_device(args.device),
            batch_size=args.batch_size, workers=args.workers, flip=args.flip, progress=args.progress)
        report = write_outputs(find_noise(options), options)
        counts = ", ".join(f"{count} {reason}" for reason, count in report["counts"].items())
        print(f"clean_dataset: {report['excluded']} of {report['samples']} images excluded ({counts}); "
              f"{len(report['merge_pairs'])} identity pairs look like one person, {len(report['overlap'])} identities "
              f"match evaluation data; wrote {args.output}/report.md, exclude.txt and include.txt", file=sys.stderr)

    return run_script("clean_dataset", work)


if __name__ == "__main__":
    sys.exit(main())
