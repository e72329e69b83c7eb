"""The cleaning job: one feature pass, then each check switched on, then the report and the lists."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from facetrain.curation.duplicates import find_duplicates
from facetrain.curation.features import CHUNK, SampleFeatures, sample_features
from facetrain.curation.identities import (DEFAULT_OUTLIER_DEGREES, cosine_to, identity_centres, mean_outliers,
                                           subcentre_outliers)
from facetrain.curation.model import CleaningModel, check_subcentres, load_cleaning_model
from facetrain.curation.overlap import DEFAULT_OVERLAP_COSINE, Overlap, evaluation_images, find_overlap
from facetrain.curation.similarity import merge_groups, similar_pairs
from facetrain.curation.source import dataset_digest, open_training_set
from facetrain.data.balanced import dataset_labels
from facetrain.data.datasets import FaceDataset
from facetrain.errors import ConfigError
from facetrain.eval.galleries import identity_folders

log = logging.getLogger("facetrain")
DEFAULT_MERGE_COSINE = 0.4  # insightface's same-person rule for identity centres (its test-overlap threshold)
EXCLUDED_REASONS = ("unreadable", "duplicate_within", "duplicate_across", "outlier")  # + overlap on request


@dataclass
class CleanOptions:
    dataset: Path
    model: Path
    output: Path
    duplicates: bool = True
    outliers: bool = True
    merges: bool = True
    overlap: bool = True
    outlier_degrees: float = DEFAULT_OUTLIER_DEGREES
    merge_cosine: float = DEFAULT_MERGE_COSINE
    overlap_cosine: float = DEFAULT_OVERLAP_COSINE
    subcentres: bool = True  # use a sub-center checkpoint's dominant sub-centres for outliers
    eval_bins: list[Path] = field(default_factory=list)
    eval_pairs: list[tuple[Path, Path]] = field(default_factory=list)
    eval_galleries: list[Path] = field(default_factory=list)  # identity folders, as identify.py's --gallery
    merge: bool = False  # apply the merges (in the new RecordIO)
    remove_overlap: bool = False
    rec: bool = False
    device: torch.device = torch.device("cpu")
    batch_size: int = 256
    workers: int = 0
    flip: str = "none"  # drop.py embeds the image alone
    cache: Optional[Path] = None  # default: <output>/features
    chunk: int = CHUNK
    progress: bool = False

    def has_evaluation_data(self) -> bool:
        return bool(self.eval_bins or self.eval_pairs or self.eval_galleries)


@dataclass
class Findings:
    """What the checks found. ``flags[reason]``: sample indices; merges and overlap are identity-level."""

    dataset: FaceDataset
    labels: np.ndarray
    model: CleaningModel
    features: SampleFeatures
    centres: np.ndarray  # per identity, from its kept samples
    cosine: np.ndarray  # each sample's cosine to its identity's centre (outlier procedure's centre)
    outlier_method: str
    flags: dict[str, np.ndarray]
    merge_pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
    overlap: Optional[Overlap]
    evaluation_names: list[str]

    def excluded(self, remove_overlap: bool) -> np.ndarray:
        reasons = [*EXCLUDED_REASONS, *(["overlap"] if remove_overlap else [])]
        chosen = [self.flags[r] for r in reasons if r in self.flags]
        return np.unique(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)


def check_options(options: CleanOptions) -> None:
    """Thresholds in range and options that need each other; one-line ConfigErrors."""
    if not 0 < options.outlier_degrees < 180:
        raise ConfigError(f"--outlier-degrees {options.outlier_degrees} is not in (0, 180)", "pass e.g. 75 (drop.py's)")
    for flag, value in (("--merge-cosine", options.merge_cosine), ("--overlap-cosine", options.overlap_cosine)):
        if not 0 < value < 1:
            raise ConfigError(f"{flag} {value} is not in (0, 1)", f"pass e.g. {flag} 0.4 (insightface's)")
    if options.merge and not options.rec:
        raise ConfigError("--merge needs --rec", "merges relabel images: add --rec to write a merged RecordIO")
    if options.merge and not options.merges:
        raise ConfigError("--merge with --no-merges", "drop one of them")
    if options.remove_overlap and not options.has_evaluation_data():
        raise ConfigError("--remove-overlap without evaluation data",
                          "pass --eval-bin FILE, --eval-pairs LIST FOLDER or --eval-gallery FOLDER")


def find_noise(options: CleanOptions, model: Optional[CleaningModel] = None) -> Findings:
    """Run the feature pass and every check switched on (``model``: the one ``options.model`` names, loaded)."""
    check_options(options)
    model = model or load_cleaning_model(options.model, options.device)  # the model first: a missing one is named first
    dataset = open_training_set(options.dataset)
    galleries = [identity_folders(path, "gallery") for path in options.eval_galleries]  # checked before the pass
    labels = dataset_labels(dataset)
    classes = max(dataset.num_classes, int(labels.max()) + 1)
    if options.subcentres:
        check_subcentres(model, classes)
    key = {"model": model.sha256, "dataset": dataset_digest(dataset), "size": len(dataset)}
    cache = options.cache or options.output / "features"
    features = sample_features(dataset, model.backbone, options.device, cache, key, options.batch_size,
                               options.workers, options.flip, options.chunk, options.progress)
    normalised, usable = features.normalised(), features.readable
    flags = {"unreadable": np.flatnonzero(~usable)}
    if model.subcentres is not None and options.subcentres:
        outliers, centres = subcentre_outliers(normalised, labels, model.subcentres, options.outlier_degrees, usable)
        method = "sub-center ArcFace: dominant sub-centre (insightface subcenter_arcface/drop.py)"
    else:
        outliers, centres = mean_outliers(normalised, labels, classes, options.outlier_degrees, usable)
        method = "identity mean embedding, computed again without the outliers"
    if options.outliers:
        flags["outlier"] = np.flatnonzero(outliers)
    cosine = cosine_to(normalised, centres, labels)
    if options.duplicates:
        found = find_duplicates(features.hashes, labels, cosine, usable)
        flags["duplicate_within"], flags["duplicate_across"] = found.within, found.across
    kept = usable.copy()
    for reason in EXCLUDED_REASONS:
        kept[flags.get(reason, [])] = False
    clean_centres = identity_centres(normalised, labels, classes, kept)
    present = np.bincount(labels[kept], minlength=classes) > 0
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    merge_pairs = similar_pairs(clean_centres, options.merge_cosine) if options.merges else empty
    overlap, names = None, []
    if options.overlap and options.has_evaluation_data():
        evaluation = evaluation_images(options.eval_bins, options.eval_pairs, galleries, model.backbone, options.device,
                                       options.flip, options.batch_size, options.workers,  # type: ignore[arg-type]
                                       cache, model.sha256)
        overlap, names = find_overlap(clean_centres, present, evaluation, options.overlap_cosine), evaluation.names
        flags["overlap"] = np.flatnonzero(np.isin(labels, overlap.identities))
    return Findings(dataset, labels, model, features, clean_centres, cosine, method, flags, merge_pairs, overlap, names)


def merged_labels(findings: Findings, merge: bool) -> np.ndarray:
    """Every sample's label after the merges (each group takes its smallest identity) when ``merge``."""
    if not merge:
        return findings.labels
    i, j, _ = findings.merge_pairs
    return merge_groups(i, j, len(findings.centres))[findings.labels]
