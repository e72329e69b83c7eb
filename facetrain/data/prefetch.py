"""Move each batch to the device ahead of time: on CUDA the copy of batch i+1 runs on a side stream
while batch i trains, so the GPU never waits for the host-to-device transfer. The trainer iterates
its DataLoader through it (a passthrough on the CPU)."""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import torch

Batch = Sequence[torch.Tensor]


class DevicePrefetcher:
    """Iterates ``loader`` (batches of tensors, e.g. uint8 images and labels) with every tensor already
    on ``device``. Pin the loader's memory (``pin_memory=True``) so the copies are asynchronous."""

    def __init__(self, loader: Iterable[Batch], device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.device.type == "cpu":  # nothing to copy: the loader's own batches
            yield from map(tuple, self.loader)
            return
        if self.device.type != "cuda":
            for batch in self.loader:
                yield tuple(t.to(self.device) for t in batch)
            return
        stream = torch.cuda.Stream(self.device)
        batches = iter(self.loader)

        def copy_next() -> Optional[tuple[torch.Tensor, ...]]:
            batch = next(batches, None)
            if batch is None:
                return None
            with torch.cuda.stream(stream):
                return tuple(t.to(self.device, non_blocking=True) for t in batch)

        upcoming = copy_next()
        while upcoming is not None:
            current_stream = torch.cuda.current_stream(self.device)
            current_stream.wait_stream(stream)
            for tensor in upcoming:
                tensor.record_stream(current_stream)  # its memory is in use on the compute stream now
            batch, upcoming = upcoming, copy_next()
            yield batch

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
