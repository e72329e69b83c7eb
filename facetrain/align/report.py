"""What an alignment run leaves beside the crops: ``landmarks.txt`` (the IJB ``name_5pts_score`` layout)
and ``report.json`` (counts, the face-choice rule, every skipped photo with its reason). Both are made from
the journal's records in photo-name order, so they do not depend on the number of workers or on the
interruptions of the run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facetrain.align.journal import ALIGNED, NO_FACE, NOT_PICKED, TOO_SMALL, UNREADABLE, Record
from facetrain.align.landmarks_file import format_line
from facetrain.files import atomic_write

LANDMARKS_NAME, REPORT_NAME = "landmarks.txt", "report.json"


def landmark_lines(records: Sequence[Record]) -> list[str]:
    """One line per crop: the photo's name, its five points and the detector's score."""
    return [format_line(r.photo, np.array(r.points, np.float32), r.score) for r in records if r.status == ALIGNED]


def build_report(records: Sequence[Record], settings: dict[str, Any], rule: str) -> dict[str, Any]:
    statuses = [r.status for r in records]
    counts = {"photos": len(records), "aligned": statuses.count(ALIGNED), "no_face": statuses.count(NO_FACE),
              "several_faces": sum(r.faces > 1 for r in records), "too_small": statuses.count(TOO_SMALL),
              "unreadable": statuses.count(UNREADABLE), "not_picked": statuses.count(NOT_PICKED)}
    several = [{"photo": r.photo, "faces": r.faces, "chosen_by": r.rule,
                **({"similarity": round(r.similarity, 4)} if r.similarity is not None else {})}
               for r in records if r.faces > 1 and r.status == ALIGNED]
    skipped = [{"photo": r.photo, "status": r.status, "reason": r.reason} for r in records if r.status != ALIGNED]
    return {"counts": counts, "face_choice": rule, "settings": settings, "several_faces": several, "skipped": skipped}


def write_outputs(folder: Path, records: Sequence[Record], settings: dict[str, Any], rule: str) -> dict[str, Any]:
    """Write ``landmarks.txt`` and ``report.json`` (each atomically) and return the report."""
    report = build_report(records, settings, rule)
    with atomic_write(folder / LANDMARKS_NAME) as f:
        f.write("".join(line + "\n" for line in landmark_lines(records)).encode())
    with atomic_write(folder / REPORT_NAME) as f:
        f.write((json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    return report
