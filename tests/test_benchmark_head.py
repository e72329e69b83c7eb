"""scripts/benchmark.py head: runs whole, model-parallel and Partial FC heads on gloo ranks and prints its table."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_head_benchmark_prints_a_row_per_layout_and_memory_halves_on_2_ranks(capsys):
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = sys.modules["benchmark"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    benchmark.main(["head", "--num-classes", "4001", "--world-size", "2", "--embedding-size", "128",
                    "--batch-size", "8", "--steps", "1", "--warmup", "0"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    table = {(cells[0].strip(), int(cells[1])): cells for cells in rows[1:]}
    assert set(table) == {("whole head, one process", 1), ("model parallel", 2), ("Partial FC, sample_rate 0.1", 2)}
    assert table[("model parallel", 2)][2].strip() == "2,001"  # the larger of 2,001 and 2,000 classes
    state = {key: float(cells[3].replace(",", "")) for key, cells in table.items()}
    whole = state[("whole head, one process", 1)]  # centres and momentum: 4,001 x 128 x 4 bytes x 2
    assert whole == round(4001 * 128 * 4 * 2 / 2**20, 1)
    assert abs(state[("model parallel", 2)] - whole / 2) <= 0.1 and state[("Partial FC, sample_rate 0.1", 2)] == state[("model parallel", 2)]
