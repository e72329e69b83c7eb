"""What a cleaning writes: ``report.json`` and ``report.md`` (counts per reason, thresholds, the model and its
sha256), ``include.txt``/``exclude.txt`` for ``dataset.include``/``exclude``, a contact sheet per reason and, on
request, a new RecordIO."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from facetrain.curation.clean import CleanOptions, Findings, merged_labels
from facetrain.curation.contact_sheet import pair_rows, sample_rows, write_sheet
from facetrain.curation.source import encoded_image
from facetrain.data.recordio import write_insightface_folder
from facetrain.data.selection import write_index_list
from facetrain.files import atomic_write

REASONS = {
    "unreadable": "the image cannot be decoded",
    "duplicate_within": "the same pixels as another image of its identity (one copy kept)",
    "duplicate_across": "the same pixels as an image of another identity (the copy nearest its centre kept)",
    "outlier": "farther than the angle from its identity's centre",
    "overlap": "its identity matches an evaluation image or gallery identity (excluded with --remove-overlap)",
}


def report_dict(findings: Findings, options: CleanOptions, excluded: np.ndarray) -> dict[str, Any]:
    i, j, cos = findings.merge_pairs
    overlap = findings.overlap
    return {
        "dataset": str(options.dataset), "samples": len(findings.labels),
        "identities": int(len(np.unique(findings.labels))),
        "model": {"path": str(findings.model.path), "sha256": findings.model.sha256, "flip": options.flip},
        "thresholds": {"outlier_degrees": options.outlier_degrees, "merge_cosine": options.merge_cosine,
                       "overlap_cosine": options.overlap_cosine},
        "checks": {"duplicates": options.duplicates, "outliers": options.outliers, "merges": options.merges,
                   "overlap": options.overlap and overlap is not None},
        "outlier_method": findings.outlier_method,
        "counts": {reason: int(len(indices)) for reason, indices in findings.flags.items()},
        "excluded": int(len(excluded)), "kept": int(len(findings.labels) - len(excluded)),
        "flagged": {reason: indices.tolist() for reason, indices in findings.flags.items()},
        "merge_pairs": [{"identities": [int(a), int(b)], "cosine": round(float(c), 4)} for a, b, c in zip(i, j, cos)],
        "overlap": [] if overlap is None else [
            {"identity": int(a), "evaluation": findings.evaluation_names[int(b)], "cosine": round(float(c), 4)}
            for a, b, c in zip(overlap.identities, overlap.best_image, overlap.cosine)],
        "merged": options.merge, "overlap_removed": options.remove_overlap,
    }


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Cleaning of {report['dataset']}", "",
             f"{report['samples']} images of {report['identities']} identities; model `{report['model']['path']}` "
             f"(sha256 `{report['model']['sha256']}`, flip {report['model']['flip']}).", "",
             f"Outliers by {report['outlier_method']}; thresholds: outliers beyond "
             f"{report['thresholds']['outlier_degrees']} degrees, one person above centre cosine "
             f"{report['thresholds']['merge_cosine']}, evaluation overlap above {report['thresholds']['overlap_cosine']}.",
             "", "| reason | images | meaning |", "|---|---:|---|"]
    lines += [f"| {reason} | {count} | {REASONS[reason]} |" for reason, count in report["counts"].items()]
    lines += ["", f"Excluded: {report['excluded']} images (exclude.txt); kept: {report['kept']} (include.txt).", "",
              f"Identities that look like one person: {len(report['merge_pairs'])} pairs"
              + (" (merged in rec/)" if report["merged"] else " (listed; --merge --rec merges them)") + "."]
    lines += [f"- {p['identities'][0]} and {p['identities'][1]}: cosine {p['cosine']}" for p in report["merge_pairs"][:50]]
    lines += ["", f"Training identities that match evaluation images or gallery identities: {len(report['overlap'])}"
              + (" (excluded)" if report["overlap_removed"] else " (listed; --remove-overlap excludes them)") + "."]
    lines += [f"- identity {o['identity']} ~ {o['evaluation']}: cosine {o['cosine']}" for o in report["overlap"][:50]]
    return "\n".join(lines) + "\n"


def write_sheets(findings: Findings, output: Path, kept: np.ndarray) -> list[Path]:
    written = []
    for reason, indices in findings.flags.items():
        if len(indices):
            rows = sample_rows(findings.dataset, indices, findings.labels, findings.cosine, kept)
            written.append(write_sheet(output / f"sheet_{reason}.png", rows))
    if len(findings.merge_pairs[0]):
        rows = pair_rows(findings.dataset, findings.merge_pairs, findings.labels, findings.cosine, kept)
        written.append(write_sheet(output / "sheet_merges.png", rows))
    return written


def write_rec(findings: Findings, output: Path, kept_indices: np.ndarray, merge: bool) -> int:
    """The kept images as a new insightface RecordIO in ``output``, labels (merged when ``merge``) renumbered densely."""
    labels = merged_labels(findings, merge)[kept_indices]
    _, dense = np.unique(labels, return_inverse=True)
    order = np.argsort(dense, kind="stable")
    images = ((int(dense[k]), encoded_image(findings.dataset, int(kept_indices[k]))) for k in order)
    return write_insightface_folder(output, images, int(dense.max()) + 1, findings.dataset.image_size)


def write_outputs(findings: Findings, options: CleanOptions) -> dict[str, Any]:
    """Every output of the cleaning in ``options.output``; returns the report."""
    output = options.output
    output.mkdir(parents=True, exist_ok=True)
    size, excluded = len(findings.labels), findings.excluded(options.remove_overlap)
    kept = np.ones(size, bool)
    kept[excluded] = False
    write_index_list(output / "exclude.txt", excluded, size, options.dataset)
    write_index_list(output / "include.txt", np.flatnonzero(kept), size, options.dataset)
    report = report_dict(findings, options, excluded)
    report["sheets"] = [p.name for p in write_sheets(findings, output, kept)]
    if options.rec:
        report["rec_images"] = write_rec(findings, output / "rec", np.flatnonzero(kept), options.merge)
    with atomic_write(output / "report.json", "w") as f:
        json.dump(report, f, indent=1)
    (output / "report.md").write_text(report_markdown(report))
    return report
