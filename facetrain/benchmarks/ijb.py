"""``benchmark.py ijb``: the stages of an IJB 1:1 and 1:N evaluation at IJB-C's scale (random features, templates
and pairs; synthetic loose crops): alignment per core, embedding images/s on the GPU (or CPU), and the seconds of
template pooling, pair scoring, the ROC and identification."""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from facetrain.align import ARCFACE_DST, crop
from facetrain.backbones import build_backbone
from facetrain.benchmarks.measure import rate, timed
from facetrain.cores import usable_cores
from facetrain.data.images import decode_image, encode_jpeg
from facetrain.data.synthetic_faces import render_face, sample_identity
from facetrain.eval.embed import embed_batches
from facetrain.eval.ijb import FARS, pair_scores, template_features
from facetrain.eval.ijb_1n import identify
from facetrain.eval.roc import roc, roc_metrics


def loose_crop_jpegs(count: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    """Synthetic faces placed in 250x250 loose crops by random similarity transforms, and their landmarks."""

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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# IJB-scale evaluation on {device}: {args.images:,} images, {args.templates:,} templates, "
          f"{args.pairs:,} pairs, {args.dim}-d features")
    rows = []
    jpegs, landmarks = loose_crop_jpegs(64)
    torch.set_num_threads(1)
    rows.append(("align: decode a 250x250 loose-crop JPEG + 5-point similarity warp (one core)", "images/CPU-s",
                 rate(lambda: sum(1 for j, lm in zip(jpegs, landmarks) if crop(decode_image(j), lm) is not None),
                      args.seconds)))
    torch.set_num_threads(usable_cores())
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
