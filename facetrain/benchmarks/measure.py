"""How the benchmarks measure: rates per second of CPU time (other load on the machine does not count), wall
clock that waits for the GPU, and memory (peak resident set, or the GPU's allocator)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch


def rate(work: Callable[[], int], seconds: float, clock: Callable[[], float] = time.process_time) -> float:
    """Items per second of ``work()`` (returns the items it did), repeated for about ``seconds`` of
    ``clock``: by default this process's CPU time, so other load on the machine does not count."""
    work()  # warm-up
    done, start = 0, clock()
    while clock() - start < seconds:
        done += work()
    return done / (clock() - start)


def children_cpu_seconds() -> float:
    """CPU seconds used so far by this process's live children, e.g. DataLoader workers (Linux)."""
    ticks, me = 0, str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me:  # ppid, then utime and stime at 11 and 12
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    """``(work(), wall-clock seconds)``, waiting for the GPU."""
    start = time.perf_counter()
    result = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_memory(device: torch.device) -> float:
    """Forget the peak so far; returns the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
    return resident_mib("VmRSS")


def peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resident_mib("VmHWM")


def tensor_mib(tensors: list[torch.Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20
