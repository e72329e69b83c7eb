"""Stateful heads (center loss, AdaFace, CurricularFace) under DDP: their statistics are the global batch's,
as one process would compute them from the concatenated batch (two gloo processes)."""
from __future__ import annotations

import torch
import torch.multiprocessing as mp

from facetrain.heads import build_head

STATEFUL = {"center": "centers", "adaface": "batch_mean", "curricularface": "t"}


def _stateful_heads() -> dict:
    torch.manual_seed(0)
    return {name: build_head(name, 4, 3).train() for name in STATEFUL}


def _batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=generator) * 5, torch.tensor([0, 1, 2, 0, 0, 1, 2, 2])


def _ddp_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    heads = _stateful_heads()
    x, y = _batch()
    for head in heads.values():
        head(x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4])
    if rank == 0:
        torch.save({name: head.state_dict() for name, head in heads.items()}, out)
    dist.barrier()
    dist.destroy_process_group()


def test_stateful_heads_use_global_batch_statistics_under_ddp(tmp_path):
    out = tmp_path / "ddp.pt"
    # fork: no re-import of torch in the children (seconds each on a busy 2-core machine)
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, start_method="fork")
    distributed = torch.load(out)
    heads = _stateful_heads()
    x, y = _batch()
    for name, head in heads.items():
        head(x, y)  # one process, the concatenated batch
        for key, value in head.state_dict().items():
            torch.testing.assert_close(distributed[name][key], value, msg=f"{name}.{key}")
        assert not torch.equal(head.state_dict()[STATEFUL[name]], _stateful_heads()[name].state_dict()[STATEFUL[name]])
