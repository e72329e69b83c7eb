"""1:N identification of a checkpoint on folders of face images, or on TinyFace as AdaFace evaluates it.

    python scripts/identify.py CHECKPOINT_OR_RUN_DIR --gallery DIR --probe DIR [--distractors DIR]
        [--enrol images|mean] [--ranks 1 5 10 20] [--fpirs 0.01 0.1] [--output DIR] [--no-cache]
        [--batch-size 256] [--workers 8] [--device auto] [--flip sum] [--align [DETECTION OPTIONS]]
    python scripts/identify.py CHECKPOINT_OR_RUN_DIR --tinyface ROOT [--output DIR] ...

``--gallery`` and ``--probe`` hold one folder per identity (``<identity>/<image>``); probes of identities
absent from the gallery are the non-mated probes of the open-set figures (TPIR at FPIR). ``--distractors``
adds images of nobody to the gallery. ``--enrol mean`` enrols each gallery identity once, by the mean of its
normalised features; ``images`` (the default) enrols every image, a probe's mate being its best-scoring one.
``--align``: the images are raw photos; each one's face is found and cropped as scripts/align.py crops it (a
photo without a face stops it, naming the photo).

``--tinyface`` is TinyFace's ``Testing_Set`` (``Probe/``, ``Gallery_Match/``, ``Gallery_Distractor/``) or an
aligned copy of it: the gallery is the matched images plus all distractors, ranks 1, 5 and 20 (AdaFace's
``validation_lq/validate_tinyface.py``). Resize policy: every image is resized to 112x112 (bilinear when
enlarging, area when shrinking, aspect ratio not kept), so TinyFace's raw crops (about 20x16 pixels) are
upsampled whole; AdaFace's published figures come from crops it first aligned with MTCNN to 112x112
(``aligned_pad_0.1_pad_high``), which pass through unchanged.

Writes ``<name>.json`` (every figure, probe counts) and ``<name>_cmc.png`` (plus ``<name>_tpir.png`` when
some probes are not mated) to ``--output`` (default ``identify_results``), ``<name>`` being ``tinyface`` or
``identification``; the image features are kept there (``features_*.npy``) for the next run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from facetrain import load_backbone
from facetrain.align.options import add_align_options, photo_aligner
from facetrain.align.photos import photo_inputs
from facetrain.cli import run_script, script_parser
from facetrain.eval.embed import embed_files
from facetrain.eval.feature_cache import cached_features, checkpoint_digest, file_list_digest
from facetrain.eval.galleries import DISTRACTOR, ImageSet, distractor_folder, identity_folders, tinyface
from facetrain.eval.identification import FPIRS, enrol_mean, identification_metrics, metrics_table, search
from facetrain.eval.options import add_embedding_options, embedding_device, parse_embedding_args
from facetrain.eval.plots import plot_cmc, plot_tpir
from facetrain.runs.run_dir import find_checkpoint

TINYFACE_RANKS = (1, 5, 20)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("identify", __doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file, a run directory (its newest checkpoint) or an ONNX model")
    parser.add_argument("--gallery", type=Path, help="folder of gallery identities (<identity>/<image>)")
    parser.add_argument("--probe", type=Path, help="folder of probe identities (<identity>/<image>)")
    parser.add_argument("--distractors", type=Path, help="folder of gallery images of nobody in the probes")
    parser.add_argument("--tinyface", type=Path, help="TinyFace's Testing_Set (or its aligned copy)")
    parser.add_argument("--enrol", choices=("images", "mean"), default="images",
                        help="enrol every gallery image, or each identity once by its mean feature")
    parser.add_argument("--ranks", type=int, nargs="+", help="ranks of the CMC to report (default 1 5 10 20; TinyFace 1 5 20)")
    parser.add_argument("--fpirs", type=float, nargs="+", default=list(FPIRS), help="FPIRs of the open-set figures")
    parser.add_argument("--output", type=Path, default=Path("identify_results"), help="folder for the JSON and PNGs")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="compute the image features again instead of reusing those in --output")
    add_embedding_options(parser)
    add_align_options(parser)
    args = parse_embedding_args(parser, argv)
    if (args.tinyface is None) == (args.gallery is None and args.probe is None):
        parser.error("pass either --gallery and --probe, or --tinyface")
    if args.tinyface is None and (args.gallery is None or args.probe is None):
        parser.error("--gallery and --probe go together")
    if args.tinyface is not None and args.distractors is not None:
        parser.error("--distractors is for --gallery folders (TinyFace brings its own)")
    if args.ranks is not None and min(args.ranks) < 1:
        parser.error("--ranks must be 1 or more")
    if not all(0 < f <= 1 for f in args.fpirs):
        parser.error("--fpirs must lie in (0, 1]")
    args.ranks = args.ranks or list(TINYFACE_RANKS if args.tinyface else (1, 5, 10, 20))
    return args


def image_sets(args: argparse.Namespace) -> tuple[str, ImageSet, ImageSet]:
    """``(name, probes, gallery)`` of the command line, every folder checked before any image is embedded."""
    if args.tinyface is not None:
        return ("tinyface", *tinyface(args.tinyface))
    gallery = identity_folders(args.gallery, "gallery")
    if args.distractors is not None:
        gallery = gallery + distractor_folder(args.distractors)
    return "identification", identity_folders(args.probe, "probe"), gallery


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        device = embedding_device(args.device)
        checkpoint = find_checkpoint(args.checkpoint)  # the model first: a missing one is the first thing to say
        name, probes, gallery = image_sets(args)
        everything = probes + gallery
        key = {"checkpoint": checkpoint_digest(checkpoint), "images": file_list_digest(everything.base, everything.names),
               "flip": args.flip, "size": 112}
        aligner = photo_aligner(args)
        key.update({"align": aligner.key()} if aligner else {})
        features = cached_features(args.output if args.cache else None, key, lambda: embed_files(
            load_backbone(checkpoint, device), everything.base, everything.names, device, args.batch_size, args.workers,
            args.flip, args.progress, name, **photo_inputs(aligner)))
        probe_feats, gallery_feats = features[: len(probes.names)], features[len(probes.names):]
        gallery_ids = gallery.identities
        if args.enrol == "mean":
            people = gallery_ids != DISTRACTOR
            means, ids = enrol_mean(gallery_feats[people], gallery_ids[people])
            gallery_feats, gallery_ids = np.concatenate([means, gallery_feats[~people]]), np.concatenate([ids, gallery_ids[~people]])
        result = search(probe_feats, probes.identities, gallery_feats, gallery_ids, device)
        metrics = identification_metrics(result, args.ranks, args.fpirs)
        print(metrics_table(f"{name}: {len(probes.names)} probes ({metrics['mated_probes']} mated), "
                            f"{len(gallery_ids)} gallery entries", {name: metrics}))
        report = {"checkpoint": str(checkpoint), "flip": args.flip, "enrol": args.enrol, "gallery_entries": len(gallery_ids),
                  "distractors": int((gallery_ids == DISTRACTOR).sum()), **metrics}
        args.output.mkdir(parents=True, exist_ok=True)
        written = [args.output / f"{name}.json"]
        written[0].write_text(json.dumps(report, indent=2) + "\n")
        title = "TinyFace" if args.tinyface is not None else f"{args.probe.name} in {args.gallery.name}"
        written.append(plot_cmc({name: result}, args.output / f"{name}_cmc.png", title, max(args.ranks)))
        if (~result.mated).any():
            written.append(plot_tpir({name: result}, args.output / f"{name}_tpir.png", title))
        print(f"identify: wrote {', '.join(p.name for p in written)} to {args.output}", file=sys.stderr)

    return run_script("identify", work)


if __name__ == "__main__":
    sys.exit(main())
