"""Run a function in forked processes joined by a gloo process group (no torchrun, no re-import)."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_calls = itertools.count()


def _entry(rank: int, fn: Callable[..., None], world_size: int, init_file: str, args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path: Path, world_size: int, fn: Callable[..., None], *args: Any) -> None:
    """``fn(rank, world_size, *args)`` on ``world_size`` forked gloo ranks; raises if any rank fails.

    ``fn`` must be a module-level function; results travel through files.
    """
    init_file = tmp_path / f"gloo_init_{next(_calls)}"
    mp.start_processes(_entry, args=(fn, world_size, str(init_file), args), nprocs=world_size, start_method="fork")
