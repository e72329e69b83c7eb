"""How long this process has been running: start-up time is measured from the process's start,
so it includes the interpreter and every import."""
from __future__ import annotations

import os
import time

_IMPORTED = time.monotonic()


def seconds_since_start() -> float:
    """Seconds since this process started (Linux: from ``/proc``; elsewhere: since this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED
