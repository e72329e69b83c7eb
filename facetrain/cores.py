"""The CPU cores this process may use, and worker counts capped by them."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what taskset, a container or a SLURM job allows),
    which can be fewer than the machine has; ``os.cpu_count()`` where affinity is unknown (not Linux)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def capped_workers(requested: int) -> int:
    """``requested`` worker processes, at most one per usable core (more only share the same cores)."""
    return min(requested, usable_cores())
