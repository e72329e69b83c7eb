"""Preemption: SIGTERM or SIGUSR1 asks the run to stop. Every rank finishes its current step, the
ranks agree to stop at the same step, rank 0 writes a checkpoint, and the process exits with
``PREEMPTED_EXIT_CODE`` so a job script can tell "run me again" from a failure.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional, Union

from facetrain.parallel.groups import all_reduce_max

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, run the same command again

_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


class Preempted(Exception):
    """Raised once the checkpoint of a stop request is written."""

    def __init__(self, signal_name: str, step: int, run_dir: Path) -> None:
        super().__init__(f"stopped by {signal_name} at step {step} with a checkpoint saved; "
                         f"continue with resume={run_dir} (or resume=auto)")


class StopRequest:
    """While entered, SIGTERM and SIGUSR1 are recorded instead of killing the process."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, _Handler] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signum = signum

    def agreed(self) -> Optional[str]:
        """The signal's name once any rank received one, the same on every rank (a one-integer
        all_reduce on the CPU per call), else None."""
        signum = all_reduce_max(self.signum)
        return signal.Signals(signum).name if signum else None


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a signal sent to the whole process group (as SLURM does) must
    not kill the workers; the main process stops them when it is done."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
