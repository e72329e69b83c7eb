"""The head pictures: scripts/plot_margins.py and scripts/toy_2d.py run (small settings) and write their files."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from facetrain.docs_figures.head_curves import angular_margin, families, no_setup, x2softmax_margins

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the scripts set their own


def test_plot_margins_writes_its_figures(tmp_path):
    assert _script("plot_margins").main(["--out", str(tmp_path), "--heads", "softmax,arcface,x2softmax,adaface",
                                         "--points", "101", "--angles", "6"]) == 0
    for name in ("target_logits.png", "angular_margins.png", "x2softmax_margin.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_target_logit_panels_group_the_heads_by_family():
    panels = families(["arcface", "cosface", "subcenter_arcface", "x2softmax", "softmax", "newhead"])
    assert panels == {"plain (no margin)": ["softmax"], "additive angular (ArcFace)": ["arcface", "subcenter_arcface"],
                      "additive cosine (CosFace)": ["cosface"], "quadratic (X2-Softmax)": ["x2softmax"],
                      "newhead": ["newhead"]}


def test_angular_margins_match_closed_forms():
    phi = 2.0
    closed_forms = {  # degrees, for centres phi apart
        "normface": 0.0,
        "arcface": math.degrees(0.5),
        "cosface": math.degrees(2 * math.asin(0.4 / (2 * math.sin(phi / 2)))),  # cos a - m = cos(phi - a)
    }
    for name, expected in closed_forms.items():
        assert angular_margin(name, {}, no_setup, phi, 4001) == pytest.approx(expected, abs=1e-6), name


def x2softmax_margin_by_hand(phi_deg: float, a: float = -0.9, k: float = 0.65) -> float:
    """``phi - 2t`` (degrees), ``t`` the root in ``[0, phi]`` of ``a*t^2 + k = cos(phi - t)`` (X2-Softmax's
    boundary at the official a, h = 0, k; ``phi`` above arccos(k)), found by bisection in plain floats."""
    phi = math.radians(phi_deg)
    low, high = 0.0, phi  # the own class wins at t = 0 (k >= cos(phi)) and loses at t = phi
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if a * middle**2 + k >= math.cos(phi - middle) else (low, middle)
    return math.degrees(phi - 2 * low)


def test_x2softmax_margin_of_the_head_is_u_shaped_as_the_formula_says():
    """docs/heads.md: with a=-0.9, h=0, k=0.65 the margin is about 49 degrees at phi=50, least (about 36) near
    phi=95 and 53 at 180: it grows with phi only past the minimum."""
    phis = [50.0, 95.0, 180.0]
    by_hand = [x2softmax_margin_by_hand(phi) for phi in phis]
    from_head = [margin for _, _, margin in x2softmax_margins(phis, 2001)]
    assert from_head == pytest.approx(by_hand, abs=1e-6)
    assert [round(margin, 1) for margin in by_hand] == [48.9, 36.2, 53.4]
    grid = [50.0 + i for i in range(131)]
    margins = [x2softmax_margin_by_hand(phi) for phi in grid]
    lowest = min(range(len(grid)), key=margins.__getitem__)
    assert 90 <= grid[lowest] <= 96 and margins[lowest] == pytest.approx(36.2, abs=0.05)
    assert all(x > y for x, y in zip(margins[:lowest], margins[1:lowest + 1]))  # falls up to the minimum ...
    assert all(x < y for x, y in zip(margins[lowest:], margins[lowest + 1:]))  # ... and grows after it


def test_toy_2d_writes_figure_and_numbers(tmp_path):
    _script("toy_2d").main(["--out", str(tmp_path), "--heads", "softmax,center", "--steps", "20",
                            "--train-samples", "20", "--test-samples", "10", "--identities", "4"])
    assert (tmp_path / "toy_2d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "toy_2d.json").read_text())
    assert set(report["heads"]) == {"softmax", "center"} and report["settings"]["identities"] == 4
    stds = report["heads"]["center"]["angular_std_deg"]
    assert len(stds) == 4 and all(0.0 <= v <= 180.0 for v in stds.values())
