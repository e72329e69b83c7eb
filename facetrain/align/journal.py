"""What an alignment run has done, one JSON line per photo, appended as each photo is finished: a run killed
at any moment loses at most the photos in flight, and the next run with the same settings skips the rest.

The first line holds the settings; a later run with other settings is refused (its crops would not match).
A line cut short by a kill is ignored (that photo is done again); a photo listed twice counts by its last line.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from facetrain.files import atomic_write
from facetrain.errors import DataError

JOURNAL_NAME = ".align-journal.jsonl"
ALIGNED, NO_FACE, TOO_SMALL, UNREADABLE, NOT_PICKED = "aligned", "no face", "too small", "unreadable", "not picked"
STATUSES = (ALIGNED, NO_FACE, TOO_SMALL, UNREADABLE, NOT_PICKED)


@dataclass
class Record:
    """The result for one photo: its status (one of :data:`STATUSES`), why it was skipped, how many faces of
    at least the minimum size it holds, and for a crop its five points, score, and the rule that chose it
    (``only face``, ``position`` or ``likeness``, with the cosine similarity for the last)."""

    photo: str
    status: str
    reason: str = ""
    faces: int = 0
    points: Optional[list[float]] = None
    score: Optional[float] = None
    rule: str = ""
    similarity: Optional[float] = None

    def line(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, "")}, ensure_ascii=False)


class Journal:
    """The journal file ``<output>/.align-journal.jsonl`` of the run with ``settings``."""

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.path, self.settings = folder / JOURNAL_NAME, settings
        self._file = None

    def load(self) -> dict[str, Record]:
        """The records of earlier runs by photo; a DataError if they ran with other settings."""
        if not self.path.is_file():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        header = _parse(lines[0]) if lines else None
        if header is None or "settings" not in header:
            return {}  # killed before its first line was whole: nothing was recorded
        if header["settings"] != self.settings:
            changed = ", ".join(f"{key} {header['settings'].get(key)} -> {value}" for key, value in self.settings.items()
                                if header["settings"].get(key) != value)
            raise DataError(f"{self.path.parent} holds crops made with other settings ({changed})",
                            "rerun with the same settings to resume, or write to a new output folder")
        records = {}
        for text in lines[1:]:
            entry = _parse(text)
            if entry is not None and "photo" in entry and "status" in entry:
                records[entry["photo"]] = Record(**entry)
        return records

    def open(self, records: dict[str, Record]) -> None:
        """Rewrite the journal as the header and ``records`` (dropping repeats and torn lines), then keep it
        open for :meth:`append`."""
        with atomic_write(self.path) as f:
            f.write("".join([json.dumps({"settings": self.settings}) + "\n"]
                            + [records[name].line() + "\n" for name in sorted(records)]).encode())
        self._file = self.path.open("a", encoding="utf-8")

    def append(self, record: Record) -> None:
        self._file.write(record.line() + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _parse(text: str) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
