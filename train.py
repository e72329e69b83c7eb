"""Train a face-recognition model: ``python train.py [overrides]`` or ``torchrun ... train.py``."""
from __future__ import annotations

import os
from typing import Optional

# Idle OpenMP threads sleep instead of spinning (unless OMP_WAIT_POLICY says otherwise): on a CPU
# shared with other jobs spinning threads lose their core and a CPU step took twice the time.
# Set before torch is imported (BENCHMARKS.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra
from omegaconf import DictConfig

from facetrain.cli import defer_errors, run_cli


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@defer_errors
def main(cfg: DictConfig) -> Optional[float]:
    """Train; return the best accuracy of ``sweep.objective`` (what a sweeper such as Optuna optimises)."""
    from facetrain.sweeps.sweep import objective
    from facetrain.train import run

    return objective(cfg, run(cfg))


if __name__ == "__main__":
    run_cli(main)
