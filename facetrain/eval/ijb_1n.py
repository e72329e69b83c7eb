"""IJB-B / IJB-C 1:N identification: the mixed probe templates searched in each gallery.

Templates are built exactly as for 1:1 (:func:`facetrain.eval.ijb.template_features`: aligned images and
their mirror images, weighted by detector score, averaged per media, summed per template). The meta files
are insightface's (``recognition/_evaluation_/ijb/ijb_1n.py``): ``<set>_1N_gallery_G1.csv`` and ``_G2.csv``
(IJB-B: ``_S1``, ``_S2``) and ``<set>_1N_probe_mixed.csv``, comma-separated with a header line, the template
id and the subject id in the first two columns, one line per image.

Each gallery holds half of the subjects, so every probe is mated in one gallery and not in the other:
per gallery, the rank-k identification rates (mated probes) and TPIR at FPIR (non-mated probes set the
threshold), a non-mate scoring exactly as the mate ranking above it; then their average; and insightface's
figures on the two galleries joined (every probe mated), computed as its ``evaluation()`` computes them, on the
joined gallery in its order (ascending template id), ties included (:func:`facetrain.eval.identification.insightface_figures`).
The template features are ours (pooled in float64; insightface pools in float32), so scores may differ from
its by ~1e-7, which can only reorder scores closer than that; identical templates tie exactly in both.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from facetrain.errors import DataError
from facetrain.eval.identification import FPIRS, SearchResult, identification_metrics, insightface_figures, search
from facetrain.eval.ijb import IJBMeta, layout_hint, template_features

GALLERIES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}
RANKS = (1, 5, 10)


@dataclass
class TemplateList:
    """Unique template ids and the subject of each, from one 1:N list file."""

    path: Path
    templates: np.ndarray
    subjects: np.ndarray


def one_n_files(meta: IJBMeta) -> dict[str, Path]:
    """The 1:N list files of ``meta``'s target: gallery name -> path, and ``probe`` -> path."""
    prefix, folder = meta.target.lower(), meta.folder / "meta"
    files = {name: folder / f"{prefix}_1N_gallery_{name}.csv" for name in GALLERIES[meta.target]}
    return {**files, "probe": folder / f"{prefix}_1N_probe_mixed.csv"}


def read_template_list(path: Path, meta: IJBMeta) -> TemplateList:
    """The templates of a 1:N list file, checked against ``meta``'s images; a DataError names file and line."""
    hint = layout_hint(meta.target)
    if not path.is_file():
        raise DataError(f"IJB 1:N file {path} does not exist", hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(path, dtype=str, delimiter=",", skiprows=1, usecols=(0, 1), ndmin=2, comments=None)
        rows = table.astype(np.int64)
    except ValueError as exc:
        raise DataError(f"{path} is malformed ({str(exc).splitlines()[-1]})", hint) from None
    if len(rows) == 0:
        raise DataError(f"IJB 1:N file {path} lists no template", hint)
    unknown = ~np.isin(rows[:, 0], meta.templates)
    if unknown.any():
        line = int(np.flatnonzero(unknown)[0]) + 2  # the header is line 1
        raise DataError(f"{path}:{line}: template {rows[unknown][0, 0]} has no image in the meta files",
                        "use the 1:N lists of the same IJB release as the 1:1 meta files")
    pairs = np.unique(rows, axis=0)
    templates, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: template {templates[counts > 1][0]} is listed with two subjects", hint)
    return TemplateList(path, templates, pairs[:, 1])


@dataclass
class OneNResult:
    target: str
    galleries: dict[str, SearchResult]
    metrics: dict[str, Any]


def read_one_n_lists(meta: IJBMeta) -> dict[str, TemplateList]:
    """The galleries' and the probes' template lists of ``meta``'s target, checked."""
    return {name: read_template_list(path, meta) for name, path in one_n_files(meta).items()}


Enrolled = tuple[torch.Tensor, np.ndarray]  # template features [T, d] and their subjects [T]


def identify_templates(features: np.ndarray, meta: IJBMeta, lists: dict[str, TemplateList], detector_score: bool = True,
                       device: torch.device | str = "cpu") -> OneNResult:
    """The 1:N figures of image ``features`` (row i: image i of ``meta``) for the ``lists`` of :func:`read_one_n_lists`."""
    if detector_score:
        features = features * meta.detector_scores[:, None]
    template_ids, template_feats = template_features(features, meta.templates, meta.medias, device)

    def enrolled(listed: TemplateList) -> Enrolled:
        rows = torch.from_numpy(np.searchsorted(template_ids, listed.templates)).to(template_feats.device)
        return template_feats[rows], listed.subjects

    galleries = {name: enrolled(listed) for name, listed in lists.items() if name != "probe"}
    joined_order = np.argsort(np.concatenate([lists[name].templates for name in galleries]), kind="stable")
    results, metrics = identify(enrolled(lists["probe"]), galleries, joined_order)
    return OneNResult(meta.target, results, metrics)


def identify(probes: Enrolled, galleries: dict[str, Enrolled], joined_order: Optional[np.ndarray] = None
             ) -> tuple[dict[str, SearchResult], dict[str, Any]]:
    """The probes searched in each gallery: per gallery figures, their average, and insightface's figures on
    the galleries joined (entries in ``joined_order`` of the galleries' concatenation; default: as given)."""
    results = {name: search(probes[0], probes[1], *gallery) for name, gallery in galleries.items()}
    per_gallery = {name: identification_metrics(result, RANKS) for name, result in results.items()}
    average = {"rank": {str(k): _mean([m["rank"][str(k)] for m in per_gallery.values()]) for k in RANKS},
               "tpir_at_fpir": {f"{f:g}": _mean([m["tpir_at_fpir"][f"{f:g}"] for m in per_gallery.values()])
                                for f in FPIRS}}
    return results, {"galleries": per_gallery, "average": average,
                     "joined_galleries": joined(probes, list(galleries.values()), joined_order), "ties": TIES}


TIES = {"galleries": "a non-mate scoring exactly as the mate ranks above it",
        "joined_galleries": "as numpy.argsort(-similarity) orders them over the joined gallery in ascending template "
                            "id (insightface's ijb_1n.py)"}


def joined(probes: Enrolled, galleries: list[Enrolled], order: Optional[np.ndarray] = None) -> dict[str, Any]:
    """insightface's figures: the galleries joined into one (entries in ``order`` of their concatenation), in
    which every probe subject is enrolled once."""
    probe_feats, probe_subjects = probes
    subjects = np.concatenate([g[1] for g in galleries])
    gallery_feats = torch.cat([g[0] for g in galleries])
    if order is not None:
        subjects, gallery_feats = subjects[order], gallery_feats[torch.from_numpy(order).to(gallery_feats.device)]
    by_subject = np.argsort(subjects, kind="stable")
    position = np.searchsorted(subjects[by_subject], probe_subjects)
    found = (position < len(subjects)) & (subjects[by_subject][np.minimum(position, len(subjects) - 1)] == probe_subjects)
    if not found.all() or len(np.unique(subjects)) != len(subjects):
        return {"skipped": "a probe subject is missing from the galleries or enrolled twice"}
    return insightface_figures(probe_feats, gallery_feats, by_subject[position], RANKS)


def _mean(values: list) -> Any:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
