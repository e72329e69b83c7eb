"""The head pictures: scripts/plot_margins.py and scripts/toy_2d.py run (small settings) and write their files."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

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


def test_plot_margins_writes_both_figures(tmp_path):
    _script("plot_margins").main(["--out", str(tmp_path), "--heads", "softmax,arcface,x2softmax,adaface",
                                     "--points", "101", "--angles", "10"])
    for name in ("target_logits.png", "angular_margins.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_angular_margins_match_closed_forms():
    script = _script("plot_margins")
    phi = 2.0
    closed_forms = {  # degrees, for centres phi apart
        "normface": 0.0,
        "arcface": math.degrees(0.5),
        "cosface": math.degrees(2 * math.asin(0.4 / (2 * math.sin(phi / 2)))),  # cos a - m = cos(phi - a)
    }
    for name, expected in closed_forms.items():
        assert script.angular_margin(name, {}, script._no_setup, phi, 4001) == pytest.approx(expected, abs=0.1), name


def test_toy_2d_writes_figure_and_numbers(tmp_path):
    _script("toy_2d").main(["--out", str(tmp_path), "--heads", "softmax,center", "--steps", "20",
                            "--train-samples", "20", "--test-samples", "10", "--identities", "4"])
    assert (tmp_path / "toy_2d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "toy_2d.json").read_text())
    assert set(report["heads"]) == {"softmax", "center"} and report["settings"]["identities"] == 4
    stds = report["heads"]["center"]["angular_std_deg"]
    assert len(stds) == 4 and all(0.0 <= v <= 180.0 for v in stds.values())
