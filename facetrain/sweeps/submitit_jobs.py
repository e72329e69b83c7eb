"""Sweep jobs through Hydra's submitit launcher (``hydra/launcher=submitit_slurm`` or ``submitit_local``): each job
in processes of its own, one per GPU, that join one process group with the ranks SLURM (or submitit) gives them.

Preemption: submitit signals a job that is preempted or near its time limit with ``SUBMITIT_PREEMPT_SIGNAL``,
which facetrain sets to SIGUSR1, one of its own stop signals (:mod:`facetrain.runs.preemption`): the ranks
agree on a step, rank 0 saves a checkpoint, and the job re-raises the signal to submitit's handler, whose
checkpointing hook re-queues the job with the same arguments; the re-queued job finds the checkpoints in its
directory and continues from them. Stopped by another signal (SIGTERM: ``scancel``), a job ends without a result.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from typing import NoReturn

from facetrain.parallel.groups import init_distributed
from facetrain.runs.preemption import PREEMPTED_EXIT_CODE, Preempted


def in_submitit_job() -> bool:
    """Whether this process runs a job that submitit started."""
    return "SUBMITIT_EXECUTOR" in os.environ


def join_process_group() -> bool:
    """In a submitit job of several tasks, export torch's rank variables from submitit's (SLURM's) and join the
    process group; returns whether it joined one."""
    import submitit

    if submitit.JobEnvironment().num_tasks == 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    init_distributed()
    return True


def stopped_by(preempted: Preempted) -> str:
    """The name of the signal that stopped a run (``SIGUSR1``), from its message."""
    match = re.match(r"stopped by (\w+) ", str(preempted))
    return match.group(1) if match else ""


def leave(preempted: Preempted) -> NoReturn:
    """End a submitit job stopped by a signal once its checkpoint is saved: re-queued when the signal was
    submitit's, else without a result (exit code 75, as a single run stopped so)."""
    import submitit

    submitit_signal = submitit.JobEnvironment._usr_sig()
    if stopped_by(preempted) == submitit_signal.name:
        signal.raise_signal(submitit_signal)  # submitit's handler: its checkpoint hook, re-queue, exit (rank 0)
    sys.exit(PREEMPTED_EXIT_CODE)
