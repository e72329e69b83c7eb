"""Counts in messages: ``1 process``, ``2 processes``."""
from __future__ import annotations


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` and the noun in its number: ``counted(1, "process", "processes")`` is ``1 process``; the plural
    is ``singular + "s"`` unless given."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"
