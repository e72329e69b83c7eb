"""torch.distributed set-up from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE), or from
SLURM's when ``srun`` starts the processes; collectives the engine needs.

torchrun (single or multi-node, any rendezvous) exports RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT. Without them, a process started by ``srun`` (``SLURM_STEP_NUM_TASKS`` set) takes its rank
from SLURM_PROCID / SLURM_LOCALID, the world size from SLURM_STEP_NUM_TASKS, the address from the first
node of the step, and the port from MASTER_PORT or the job id.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Collection, Iterable, MutableMapping

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, configs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Ranks from torchrun's environment; a single process without it."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu[003-005,9],cpu1`` -> ``gpu003``)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot read the SLURM node list '{nodelist}'")
    prefix, ranges = match.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def adopt_slurm_environment(environ: MutableMapping[str, str] = os.environ) -> None:
    """Fill torchrun's variables from SLURM's in a process started by ``srun`` without torchrun.

    A variable already set wins (so ``srun torchrun ...`` and a user's MASTER_PORT are left alone).
    """
    if "RANK" in environ or "SLURM_STEP_NUM_TASKS" not in environ:
        return
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "localhost")
    derived = {
        "RANK": environ["SLURM_PROCID"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": environ["SLURM_STEP_NUM_TASKS"],
        "MASTER_ADDR": first_host(nodelist),
        "MASTER_PORT": str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000),
    }
    for key, value in derived.items():
        environ.setdefault(key, value)


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun or srun (gloo for CPU tensors, NCCL for CUDA ones)."""
    adopt_slurm_environment()
    info = dist_info()
    if info.enabled and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend)
    return info


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity without a process group)."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over all ranks, through a CPU tensor (gloo: no device sync)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def set_timeout(seconds: float) -> None:
    """How long a collective waits for the other ranks before it fails (the process group's timeout)."""
    if dist.is_initialized():
        setter = getattr(dist, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout  # older torch
        setter(timedelta(seconds=seconds))


_COLLECTIVE_FAILURE = re.compile(r"gloo/|NCCL|ProcessGroup|Timed out waiting|Connection (reset|closed) by peer")


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank died or stopped answering."""
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and bool(_COLLECTIVE_FAILURE.search(str(exc))))


def sum_gradients(process_group, bucket):  # type: ignore[no-untyped-def]  # DDP compares annotations literally
    """DDP communication hook: sum a gradient bucket (a ``dist.GradBucket``) over ranks, where DDP's
    default averages. For models whose loss already covers the global batch, where each rank holds a
    part of the gradient. Returns a future of the summed bucket."""
    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def global_grad_norm(parameters: Iterable[nn.Parameter], rank_local: Collection[int]) -> torch.Tensor:
    """The L2 norm of all gradients of the model: replicated parameters' gradients are the same on every
    rank, those of rank-local parameters (``id(p)`` in ``rank_local``: shards of a head) are summed over
    ranks. Row-sparse gradients are coalesced in place. No host sync."""
    shared, local = [], []
    for p in parameters:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
        (local if id(p) in rank_local else shared).append(p.grad)
    squared = nn.utils.get_total_norm(shared) ** 2
    if local:
        local_squared = nn.utils.get_total_norm(local) ** 2
        if dist.is_initialized():
            dist.all_reduce(local_squared)
        squared = squared + local_squared.to(squared.device)
    return squared.sqrt()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
