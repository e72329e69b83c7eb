"""scripts/gpu_selfcheck.py runs on the CPU (what needs CUDA is skipped, saying so) and fails loudly."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_selfcheck.py"


def _module(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_selfcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.long
def test_selfcheck_on_the_cpu_trains_both_precisions_and_skips_what_needs_cuda(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "12", "--json", str(tmp_path / "rows.json")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["check"]: row for row in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    for check in ("train mbf bf16", "train mbf fp16", "speed mbf bf16"):
        assert rows[check]["status"] == "PASS", rows[check]
    assert rows["train mbf bf16"]["figure"].endswith("3 skipped")  # exactly the forced overflows
    for check in ("train r50 bf16/fp16", "torch.compile on/off", "NCCL run"):
        assert rows[check]["status"] == "SKIP" and rows[check]["note"], rows[check]
    assert "| train mbf fp16 | PASS |" in result.stdout  # the printed table


def test_selfcheck_exits_1_when_a_check_fails(monkeypatch, capsys):
    module = _module(monkeypatch)

    def broken(size, backbone, precision, run_dir):
        raise module.CheckFailed("the forced overflow at step 2 changed the weights")

    monkeypatch.setattr(module, "check_training", broken)
    monkeypatch.setattr(module, "check_speed", lambda size, backbone, run_dir: "not timed here")
    assert module.main([]) == 1
    assert "| train mbf bf16 | FAIL |  | " in capsys.readouterr().out
