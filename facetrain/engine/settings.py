"""What the training loop is given besides the model and data: plain settings (built from the config by
:mod:`facetrain.train`) and the evaluation to run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

# What the loop is handed to evaluate with (built in facetrain.train; the loop imports no evaluation module):
# the backbone in, ``{target: {"accuracy", "std", "pairs", ...}}`` out.
Evaluator = Callable[[nn.Module], dict[str, dict[str, Any]]]


@dataclass
class TrainerSettings:
    """Plain settings the trainer needs (built from the config by ``facetrain.train``)."""

    run_dir: Path
    total_steps: int
    batch_size: int
    seed: int
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # None = fp32
    grad_clip: Optional[float]
    log_every: int
    num_workers: int
    hflip: float
    channels_last: bool
    checkpoint_every: int
    keep_last: int
    save_best: bool
    best_metric: Optional[str]  # an eval target; None = the first one
    max_nonfinite: int
    eval_every: int
    eval_at_start: bool
    progress_bar: bool
    config: dict[str, Any]  # resolved config, saved in every checkpoint
    grad_accum: int = 1  # micro-batches per optimizer step
    sampler: str = "random"  # random | balanced | mixed (facetrain.data.balanced)
    images_per_identity: int = 4  # K of the balanced samplers
    ddp_bucket_cap_mb: float = 25.0
    loss_scale_growth_interval: int = 100  # fp16: clean steps before the loss scale doubles
    frozen: tuple[str, ...] = ()  # parameter-name prefixes that do not train (finetune.frozen)
    frozen_steps: Optional[int] = None  # ... for the first N optimizer steps; None: for the whole run
