"""IJB-B / IJB-C 1:1 template verification, as insightface evaluates it
(``recognition/_evaluation_/ijb/ijb_11.py`` and ``arcface_torch/eval_ijbc.py``).

Layout (insightface's): ``<folder>/loose_crop/<image>`` and, for target ``IJBC``,
``<folder>/meta/ijbc_face_tid_mid.txt`` (``image template media`` per line),
``ijbc_template_pair_label.txt`` (``template1 template2 label``) and ``ijbc_name_5pts_score.txt``
(``image x1 y1 ... x5 y5 detector_score``, the same images in the same order). ``<folder>`` is
``--ijb-root`` or ``--ijb-root/IJBC``.

Each loose crop is aligned to 112x112 by its five landmarks with :func:`facetrain.align.crop`
(insightface's ``norm_crop`` pixel for pixel), embedded with its mirror image (summed), and weighted by
its detector score. (``arcface_torch/eval_ijbc.py`` computes its reference points as ``[30.2946, ...] + 8``
in float32, one coordinate 7.6e-6 px off ``arcface_dst``: two in three of its crops differ from
``norm_crop``'s in a few pixels.) Image features are averaged per media within a template, the
media features summed per template and L2-normalised; a pair's score is the cosine of its templates'
features. TAR at FAR 1e-6 ... 1e-1 by :mod:`facetrain.eval.roc`. Pooling (``index_add``) and scoring
(matrix products of blocks of templates, on the device) are vectorised: IJB-C's 469k images and
15.7M pairs take no loop over images or pairs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facetrain.align.crop import crop
from facetrain.align.template import ARCFACE_DST, BASE_SIZE
from facetrain.errors import DataError
from facetrain.eval.embed import FlipMode, embed_files
from facetrain.eval.feature_cache import array_digest, file_list_digest
from facetrain.eval.roc import ROC, roc, roc_metrics

TARGETS = ("IJBB", "IJBC")
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
META_FILES = ("face_tid_mid", "template_pair_label", "name_5pts_score")


def layout_hint(target: str) -> str:
    files = ", ".join(f"meta/{target.lower()}_{name}.txt" for name in META_FILES)
    return f"--ijb-root must be insightface's {target} folder (loose_crop/, {files}) or its parent"


# ---- alignment --------------------------------------------------------------------------------------
class Aligner:
    """``prepare`` of :class:`ImageFiles`: align image ``index`` by its landmarks."""

    def __init__(self, landmarks: np.ndarray, size: int = BASE_SIZE) -> None:
        self.landmarks, self.size = landmarks, size

    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        return crop(image, self.landmarks[index], self.size)


# ---- meta files -------------------------------------------------------------------------------------
@dataclass
class IJBMeta:
    """One IJB target's images (row i of every per-image array is the same image) and template pairs."""

    target: str
    folder: Path
    names: list[str]
    landmarks: np.ndarray  # [N, 5, 2] float32, pixels of the loose crop
    detector_scores: np.ndarray  # [N] float32
    templates: np.ndarray  # [N] int64
    medias: np.ndarray  # [N] int64
    pairs: np.ndarray  # [P, 2] int64 template ids
    labels: np.ndarray  # [P] bool, same identity

    @property
    def image_dir(self) -> Path:
        return self.folder / "loose_crop"


def ijb_folder(root: Path, target: str) -> Path:
    """``root/<target>`` when it holds ``meta/``, else ``root``."""
    return root / target if (root / target / "meta").is_dir() else root


def _read_columns(path: Path, columns: int, dtype: Any, hint: str) -> np.ndarray:
    """A whitespace-separated table with ``columns`` columns; a DataError names the file and line."""
    if not path.is_file():
        raise DataError(f"IJB meta file {path} does not exist", hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            table = np.loadtxt(path, dtype=dtype, ndmin=2, comments=None)
    except ValueError as exc:
        raise DataError(f"{path} is malformed ({str(exc).splitlines()[-1].split('; use ')[0]})", hint) from None
    if table.size == 0:
        raise DataError(f"IJB meta file {path} is empty", hint)
    if table.shape[1] != columns:
        raise DataError(f"{path} has {table.shape[1]} columns, not {columns}", hint)
    return table


def read_ijb_meta(root: Path, target: str) -> IJBMeta:
    """The meta files of ``target`` (IJBB or IJBC) under ``root``, checked against each other."""
    if target not in TARGETS:
        raise DataError(f"unknown IJB target '{target}'", f"choose one of: {', '.join(TARGETS)}")
    folder = ijb_folder(Path(root), target)
    meta = folder / "meta"
    prefix, hint = target.lower(), layout_hint(target)
    if not (folder / "loose_crop").is_dir():
        raise DataError(f"{folder / 'loose_crop'} does not exist", hint)
    face = _read_columns(meta / f"{prefix}_face_tid_mid.txt", 3, str, hint)
    pairs = _read_columns(meta / f"{prefix}_template_pair_label.txt", 3, np.int64, hint)
    points = _read_columns(meta / f"{prefix}_name_5pts_score.txt", 12, str, hint)
    if len(face) != len(points) or not np.array_equal(face[:, 0], points[:, 0]):
        row = next((i for i, (a, b) in enumerate(zip(face[:, 0], points[:, 0])) if a != b), min(len(face), len(points)))
        raise DataError(f"{prefix}_face_tid_mid.txt and {prefix}_name_5pts_score.txt list different images "
                        f"(from line {row + 1}: {len(face)} and {len(points)} lines)",
                        "use the two files of one IJB release, unedited")
    try:
        numbers = points[:, 1:].astype(np.float32)
        templates, medias = face[:, 1].astype(np.int64), face[:, 2].astype(np.int64)
    except ValueError as exc:
        raise DataError(f"{meta} holds a non-number where a number belongs ({exc})", hint) from None
    if not np.isin(pairs[:, :2], templates).all():
        missing = pairs[:, :2][~np.isin(pairs[:, :2], templates)][0]
        raise DataError(f"template {missing} of {prefix}_template_pair_label.txt has no image in {prefix}_face_tid_mid.txt",
                        "use the two files of one IJB release, unedited")
    return IJBMeta(target, folder, list(face[:, 0]), numbers[:, :10].reshape(-1, 5, 2), numbers[:, 10],
                   templates, medias, pairs[:, :2], pairs[:, 2].astype(bool))


# ---- features, templates, scores --------------------------------------------------------------------
def image_features(backbone: nn.Module, meta: IJBMeta, device: torch.device, batch_size: int = 256,
                   workers: int = 0, flip: FlipMode = "sum", progress: bool = False) -> np.ndarray:
    """Embeddings ``[N, d]`` of the aligned images (flip as :func:`facetrain.eval.embed.embed_batches`)."""
    return embed_files(backbone, meta.image_dir, meta.names, device, batch_size, workers, flip, progress,
                       meta.target, Aligner(meta.landmarks),
                       "IJB evaluation needs every image of the meta files: restore it from the release")


def feature_key(meta: IJBMeta) -> dict[str, Any]:
    """What :func:`image_features` of ``meta`` depends on besides the network and the flip, for the feature
    cache: the images (names, sizes, modification times), the landmarks (their values: a corrected landmarks
    file makes new features) and the alignment (reference points, crop size)."""
    return {"images": file_list_digest(meta.image_dir, meta.names), "landmarks": array_digest(meta.landmarks),
            "alignment": {"reference": ARCFACE_DST.tolist(), "size": BASE_SIZE, "crop": "norm_crop"}}


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                      device: torch.device | str = "cpu") -> tuple[np.ndarray, torch.Tensor]:
    """``(template ids sorted, their L2-normalised features float64 [T, d] on device)``: image
    features averaged per (template, media), the media features summed per template."""
    template_ids, template_of_image = np.unique(templates, return_inverse=True)
    _, media_of_image = np.unique(medias, return_inverse=True)
    group_key = template_of_image.astype(np.int64) * (media_of_image.max() + 1) + media_of_image
    _, first, group_of_image = np.unique(group_key, return_index=True, return_inverse=True)
    groups = torch.from_numpy(group_of_image.reshape(-1)).to(device)
    feats = torch.from_numpy(np.ascontiguousarray(features)).to(device, torch.float64)
    media = torch.zeros(len(first), feats.shape[1], dtype=torch.float64, device=device).index_add_(0, groups, feats)
    media /= torch.bincount(groups, minlength=len(first)).unsqueeze(1)
    template_of_group = torch.from_numpy(template_of_image[first]).to(device)
    pooled = torch.zeros(len(template_ids), feats.shape[1], dtype=torch.float64, device=device)
    pooled.index_add_(0, template_of_group, media)
    return template_ids, F.normalize(pooled, dim=1)


def pair_scores(template_ids: np.ndarray, template_feats: torch.Tensor, pairs: np.ndarray,
                block_rows: int = 1024) -> np.ndarray:
    """Cosine similarity float64 ``[P]`` of each pair of template ids: pairs are grouped by their first
    template, and each block of ``block_rows`` first templates is scored against every template by
    one matrix product, from which its pairs' scores are gathered."""
    device = template_feats.device
    index = np.searchsorted(template_ids, pairs)
    order = np.argsort(index[:, 0], kind="stable")
    firsts, starts = np.unique(index[order, 0], return_index=True)
    bounds = np.append(starts, len(pairs))
    order_t, index_t = torch.from_numpy(order).to(device), torch.from_numpy(index).to(device)
    scores = torch.empty(len(pairs), dtype=torch.float64, device=device)
    for block in range(0, len(firsts), block_rows):
        rows = torch.from_numpy(firsts[block : block + block_rows]).to(device)
        similarity = template_feats[rows] @ template_feats.T  # [rows, templates]
        chosen = order_t[bounds[block] : bounds[min(block + block_rows, len(firsts))]]
        local_row = torch.searchsorted(rows, index_t[chosen, 0])
        scores[chosen] = similarity[local_row, index_t[chosen, 1]]
    return scores.cpu().numpy()


@dataclass
class IJBResult:
    target: str
    images: int
    templates: int
    scores: np.ndarray  # [P] float64
    labels: np.ndarray  # [P] bool
    curve: Optional[ROC]
    metrics: dict[str, Any]  # tar_at_far {"1e-6": TAR or None, ...}, auc, eer

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "images": self.images, "templates": self.templates, "pairs": len(self.labels),
                "positive_pairs": int(self.labels.sum()), "negative_pairs": int((~self.labels).sum()), **self.metrics}


def score_templates(features: np.ndarray, meta: IJBMeta, detector_score: bool = True,
                    device: torch.device | str = "cpu") -> IJBResult:
    """The verification figures of image ``features`` (row i: image i of ``meta``)."""
    if detector_score:
        features = features * meta.detector_scores[:, None]
    template_ids, template_feats = template_features(features, meta.templates, meta.medias, device)
    scores = pair_scores(template_ids, template_feats, meta.pairs)
    curve = roc(scores, meta.labels)
    return IJBResult(meta.target, len(meta.names), len(template_ids), scores, meta.labels, curve,
                     roc_metrics(curve, FARS))


def evaluate_ijb(backbone: nn.Module, meta: IJBMeta, device: torch.device, batch_size: int = 256, workers: int = 0,
                 flip: FlipMode = "sum", detector_score: bool = True, progress: bool = False) -> IJBResult:
    """The 1:1 verification figures of ``backbone`` on ``meta``'s template pairs."""
    features = image_features(backbone, meta, device, batch_size, workers, flip, progress)
    return score_templates(features, meta, detector_score, device)
