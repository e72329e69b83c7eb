"""The generated blocks of README.md and docs/*.md (``<!-- begin generated: NAME -->`` ... ``<!-- end generated:
NAME -->``): finding and rewriting them, and the stamp (machine and date) each block carries."""
from __future__ import annotations

import datetime
import os
import platform
import re
import textwrap
from pathlib import Path

import torch

from facetrain.cores import usable_cores
from facetrain.errors import FacetrainError


def pages(root: Path) -> list[Path]:
    """README.md and docs/*.md under ``root``."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(^<!-- begin generated: {re.escape(name)} -->\n)(.*?)(^<!-- end generated: {re.escape(name)} -->$)",
                      re.DOTALL | re.MULTILINE)


def block_text(text: str, name: str) -> str | None:
    """The body of block ``name`` in ``text`` (None when the text has no such block)."""
    match = _block(name).search(text)
    return None if match is None else match.group(2)


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with block ``name``'s body replaced by ``body`` (the markers kept)."""
    return _block(name).sub(lambda match: match.group(1) + body.rstrip("\n") + "\n" + match.group(3), text, count=1)


def wrap(text: str, width: int = 110) -> str:
    """``text`` with each prose paragraph filled to ``width`` columns; tables, images and blank lines kept."""
    lines = []
    for line in text.splitlines():
        keep = not line.strip() or line.startswith(("|", "!["))
        lines += [line] if keep else textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def write_blocks(root: Path, blocks: dict[str, str]) -> list[Path]:
    """Rewrite each block of ``blocks`` in the page under ``root`` that holds it; returns the pages changed."""
    found: dict[str, Path] = {}
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        held = [name for name in blocks if block_text(text, name) is not None]
        for name in held:
            text = replace_block(text, name, wrap(blocks[name]))
            found[name] = page
        if held:
            page.write_text(text, encoding="utf-8")
    missing = sorted(set(blocks) - set(found))
    if missing:
        raise FacetrainError(f"no page under {root} holds the generated block(s) {', '.join(missing)}",
                             "add '<!-- begin generated: NAME -->' and '<!-- end generated: NAME -->' lines "
                             "where the figures belong")
    return sorted(set(found.values()))


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The machine in words: cores this process may use, CPU, GPU if any, torch's version."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{usable_cores()}-core CPU ({cpu_name()}), {device}, torch {torch.__version__}"


def stamp() -> str:
    """``Measured on <machine>, <UTC date>``: the first words of every generated block."""
    return f"Measured on {machine()}, {datetime.datetime.now(datetime.timezone.utc).date().isoformat()}"


def load() -> str:
    """How busy the machine was (times depend on it): its load average over the last 5 minutes and its cores."""
    return f"load average {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores"
