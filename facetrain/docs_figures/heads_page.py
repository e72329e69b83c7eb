"""The figures of docs/heads.md: the head pictures (block ``head_pictures``) and X2-Softmax's angular margin,
with its numbers taken from the project's own head (block ``x2softmax_margin``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from facetrain.docs_figures.head_curves import (boundary, margin_curves, no_setup, target_logits, x2softmax_margins,
                                                x2softmax_picture)
from facetrain.docs_figures.pages import load
from facetrain.docs_figures.runs import duration
from facetrain.heads import HEADS, build_head

TABLE_PHIS = (40.0, 50.0, 60.0, 70.0, 80.0, 95.0, 120.0, 150.0, 180.0)
BISECTIONS = 40


@dataclass
class HeadPictures:
    pictures: list[Path]
    table: list[tuple[float, float, float]]  # (phi, boundary t, margin) in degrees
    lowest: tuple[float, float, float]  # the row of the smallest margin on a grid of phi
    grid_step: float  # degrees between the phis searched for the smallest margin
    beyond_centre_below: float  # phi below which the boundary lies beyond the own centre: arccos(k)
    no_region_below: float  # phi below which the own class wins nowhere on the arc
    a: float
    h: float
    k: float
    seconds: float


def no_region_below(points: int) -> float:
    """The smallest ``phi`` (degrees) at which X2-Softmax's class wins somewhere on the arc, by bisection
    between 1 degree (nowhere) and arccos(k) (at least on its own centre)."""
    low, high = 1.0, 90.0
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        wins = not math.isnan(boundary("x2softmax", {}, no_setup, math.radians(middle), points))
        low, high = (low, middle) if wins else (middle, high)
    return high


def measure(docs: Path, quick: bool) -> HeadPictures:
    """Draw the pictures into ``docs`` and compute X2-Softmax's margins (``quick``: coarse grids)."""
    start = time.perf_counter()
    points, angles, step = (201, 10, 10.0) if quick else (2001, 90, 0.5)
    names = HEADS.names()
    pictures = [target_logits(docs, names), margin_curves(docs, names, points, angles),
                x2softmax_picture(docs, points, angles)]
    grid = [40.0 + step * i for i in range(int(140 / step) + 1)]
    head = build_head("x2softmax", embedding_size=2, num_classes=2)
    return HeadPictures(pictures, x2softmax_margins(list(TABLE_PHIS), points),
                        min(x2softmax_margins(grid, points), key=lambda row: row[2]), step,
                        math.degrees(math.acos(head.k)), no_region_below(points), head.a, head.h, head.k,
                        time.perf_counter() - start)


def shape(figures: HeadPictures) -> str:
    """``U-shaped`` when the smallest margin lies strictly inside the table's range of phi."""
    first, last, lowest = figures.table[0][2], figures.table[-1][2], figures.lowest[2]
    return "U-shaped" if lowest < first and lowest < last else "monotonic"


def margin_block(figures: HeadPictures, stamp: str) -> str:
    f = figures
    by_phi = {phi: margin for phi, _, margin in f.table}
    phi_low, _, margin_low = f.lowest
    lines = [
        f"{stamp}, from the project's X2-Softmax head (`facetrain/heads/x2softmax.py`) at a = {f.a:g}, h = {f.h:g}, "
        f"k = {f.k:g}: a forward pass per probe point on the arc, the boundary located by bisection:", "",
        "| `phi` (degrees) | " + " | ".join(f"{phi:g}" for phi, _, _ in f.table) + " |",
        "|---|" + "---:|" * len(f.table),
        "| boundary `t` | " + " | ".join(f"{t:.1f}" for _, t, _ in f.table) + " |",
        "| margin `phi - 2t` | " + " | ".join(f"{margin:.1f}" for _, _, margin in f.table) + " |", "",
        f"The margin is {shape(f)}: about {by_phi[50.0]:.0f} degrees at `phi` = 50, a minimum of "
        f"{margin_low:.1f} at `phi` = {phi_low:g} (searched every {f.grid_step:g} degrees), and {by_phi[180.0]:.0f} at "
        f"180, so the paper's \"grows monotonically\" with the angle between the classes holds only past about "
        f"{phi_low:.0f} degrees. Below `phi` = arccos(k) = {f.beyond_centre_below:.1f} degrees the boundary lies "
        f"beyond the class's own centre (`t < 0`: even the centre scores below the other class), and below "
        f"about {f.no_region_below:.1f} degrees no point of the arc scores its own class above the other. "
        "`x2softmax_margin.png` below draws both halves of the derivation from the head's own forward pass.",
    ]
    return "\n".join(lines) + "\n"


def pictures_block(figures: HeadPictures, stamp: str) -> str:
    return "\n".join([
        f"{stamp} ({duration(figures.seconds)} for the three pictures and the numbers above; {load()}).", "",
        "The target logit `f(theta)` of every head, one panel per family, the same axes; curves that coincide "
        "are drawn once, their labels joined:", "",
        "![target logit of every head against the angle to the class centre, one panel per family]"
        "(target_logits.png)", "",
        "X2-Softmax's boundary `cos(phi - t) = f(t)` for three angles between the centres (left), and the "
        "margin `phi - 2t` against `phi`, ArcFace and CosFace beside it (right):", "",
        "![X2-Softmax's decision boundary and its U-shaped angular margin](x2softmax_margin.png)", "",
        "The angular margin of every head against the angle between the two centres (the X2-Softmax paper's "
        "figure 4):", "",
        "![angular margin of every head against the angle between the class centres](angular_margins.png)",
    ]) + "\n"
