"""Keep freed CPU memory inside the process for the next training step.

glibc's malloc hands every block above its mmap threshold (at most 32 MB) straight from the kernel and
unmaps it when freed, so on the CPU each step page-faults its large activations and gradients back in
(a 64-image MobileFaceNet step has dozens of 50-400 MB tensors). Serving them from malloc's heap and
never trimming it keeps the pages mapped: the process holds its peak memory, as a caching allocator
does, and the step runs faster (BENCHMARKS.md).
"""
from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def reuse_freed_memory() -> bool:
    """Serve all allocations from malloc's heap and keep freed memory (glibc only; process-wide, for
    allocations from now on). Returns whether it applied."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the running process's C library
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM))
