"""scripts/benchmark.py data: runs on a small folder and prints its table."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tests.data_helpers import write_image_folder

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_data_benchmark_prints_every_measurement(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = sys.modules["benchmark"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    write_image_folder(tmp_path, [4, 4])
    benchmark.main(["data", str(tmp_path), "--workers", "0", "1", "--batch-size", "4", "--batches", "2",
                    "--samples", "8", "--seconds", "0.05", "--augment", "grayscale=0.5", "crop_scale=0.8,1.0"])
    out = capsys.readouterr().out
    assert "8 images, 2 classes" in out and "Augment([ToGray], seed=0)" in out
    for row in ("decode, opencv", "decode, pil", "dataset[i]", "DataLoader, 0 workers", "DataLoader, 1 workers"):
        assert f"| {row}" in out
