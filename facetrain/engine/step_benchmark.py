"""Timing the real training step (:meth:`Trainer.train_step`): images/s, ms per step, data wait vs
compute, peak memory, and model FLOP utilisation from a FLOP count of one step.

Used by ``scripts/benchmark.py train``. On CUDA the steps are timed with CUDA events (no host sync
inside the timed loop, as in training); on the CPU with the host clock.
"""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
import warnings
from itertools import chain, cycle
from typing import Any, Iterator, Optional, Sequence

import torch
from torch.utils.data import Dataset, default_collate
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from facetrain.data.prefetch import DevicePrefetcher
from facetrain.data.sampler import WithIndex
from facetrain.engine.trainer import Trainer

Batch = Sequence[torch.Tensor]  # uint8 images [N,3,H,W], labels [N], sample indices [N]

# Dense peak TFLOP/s from NVIDIA's datasheets (no structured sparsity), by GPU and math mode. fp32
# convolutions run on TF32 tensor cores where torch allows it (torch.backends.cudnn.allow_tf32, on
# by default), so fp32 steps are measured against the TF32 peak on GPUs that have one.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
}


def gpu_model(device_name: str) -> Optional[str]:
    """The :data:`PEAK_TFLOPS` entry of a CUDA device name (``torch.cuda.get_device_name``), if listed."""
    words = device_name.upper().replace("-", " ").split()
    if "NVL" in words:  # H100/H200 NVL run at other clocks than the SXM parts
        return None
    if "H100" in words:
        return "H100 PCIe" if "PCIE" in words else "H100 SXM"
    return next((model for model in ("H200", "A100", "L40S", "L4") if model in words), None)


def peak_tflops(device: torch.device, amp_dtype: Optional[torch.dtype]) -> tuple[Optional[float], Optional[str]]:
    """``(peak TFLOP/s, what it is)`` of ``device`` for steps in ``amp_dtype`` (None = fp32); ``(None,
    None)`` for CPUs and GPUs not in :data:`PEAK_TFLOPS`."""
    if device.type != "cuda":
        return None, None
    model = gpu_model(torch.cuda.get_device_name(device))
    if model is None:
        return None, None
    peaks = PEAK_TFLOPS[model]
    math_mode = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")  # type: ignore[arg-type]
    if math_mode == "fp32" and torch.backends.cudnn.allow_tf32:
        math_mode = "tf32"
    return peaks[math_mode], f"{model} {math_mode} dense"


def conv_backward_flops(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any, _stride: Any,
                        _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any, _groups: int,
                        output_mask: Sequence[bool], out_shape: Any = None, **_: Any) -> int:
    """FLOPs of a convolution's backward: each multiply-add of its forward appears once in the input
    gradient and once in the weight gradient. (torch's own formula ignores ``groups`` for the weight
    gradient and counts a depthwise convolution as dense: 33x too much for a 64-channel one.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def step_flops(trainer: Trainer, batch: Batch) -> int:
    """FLOPs of the forward and backward pass of one step on ``batch`` (matrix products and
    convolutions, as ``torch.utils.flop_counter`` counts them, with :func:`conv_backward_flops`), run
    eagerly; gradients are cleared."""
    model = trainer.model
    images, labels = trainer.model_inputs(*batch)
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as counter:
        model.head(model.backbone(images), labels).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def forward_flops(model: torch.nn.Module, image_size: int = 112) -> int:
    """FLOPs of one eval-mode forward pass of ``model`` on one ``[1, 3, image_size, image_size]`` image
    (matrix products and convolutions, as ``torch.utils.flop_counter`` counts them)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops()


class RandomFaces(Dataset):
    """``size`` random uint8 ``[3, image_size, image_size]`` images; sample ``i`` has label
    ``i % num_classes`` and pixels drawn from ``(seed, i)``."""

    def __init__(self, size: int, num_classes: int, image_size: int = 112, seed: int = 0) -> None:
        self.size, self.num_classes, self.image_size, self.seed = size, num_classes, image_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        size = self.image_size
        return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator), index % self.num_classes


def in_memory_batches(dataset: Dataset, batch_size: int, count: int, device: torch.device) -> Iterator[Batch]:
    """``count`` collated batches of ``dataset`` (with sample indices) held in host memory, pinned
    for CUDA, repeated forever and copied to ``device`` as the trainer's batches are."""
    indexed = WithIndex(dataset)
    pool = [default_collate([indexed[i] for i in range(k * batch_size, (k + 1) * batch_size)]) for k in range(count)]
    if device.type == "cuda":
        pool = [[t.pin_memory() for t in batch] for batch in pool]
    return iter(DevicePrefetcher(cycle(pool), device))


def loader_batches(trainer: Trainer) -> Iterator[Batch]:
    """The trainer's own batches (DataLoader and device prefetch), epoch after epoch."""
    while True:
        yield from trainer.epoch_batches()


class _Clock:
    """Time stamps on the device's timeline: CUDA events on a GPU, the host clock otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> Any:
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.device.type == "cuda" else (end - start) * 1000.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@contextlib.contextmanager
def _host_syncs(device: torch.device) -> Iterator[Optional[list]]:
    """On CUDA, the warnings of ``torch.cuda.set_sync_debug_mode("warn")``: one per operation that
    made the host wait for the GPU. None elsewhere."""
    if device.type != "cuda":
        yield None
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode(previous)


def _spread(values: list[float]) -> dict[str, float]:
    deciles = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return {"median": statistics.median(values), "p10": deciles[0], "p90": deciles[-1],
            "min": min(values), "max": max(values)}


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS of the process"


def time_training(trainer: Trainer, batches: Iterator[Batch], warmup: int, steps: int,
                  peak: Optional[float] = None) -> dict[str, Any]:
    """Run ``warmup`` then ``steps`` timed calls of ``trainer.train_step`` on ``batches`` (optimizer
    steps; micro-batches when ``trainer.grad_accum`` > 1, each with its share of the optimizer step).

    ``peak``: the device's peak TFLOP/s (default: :func:`peak_tflops`, None on CPUs). Returns the
    figures as a JSON-ready dict; per-step times are on the device's timeline, the data wait is the
    host's time blocked waiting for the next batch, and on CUDA ``host_syncs_per_step`` counts the
    operations in the timed steps that made the host wait for the GPU (0 when the step is sync-free).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need at least one timed step and no negative warm-up, got {steps} and {warmup}")
    device, clock = trainer.s.device, _Clock(trainer.s.device)
    first = next(batches)
    flops = step_flops(trainer, first)
    batches = chain([first], batches)
    trainer.model.train()
    for _ in range(warmup):
        trainer.train_step(*next(batches))
    clock.sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    starts, begins, ends, data_wait = [], [], [], []  # step start, batch in hand, step end; host waits
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    with _host_syncs(device) as syncs:
        for _ in range(steps):
            starts.append(clock.mark())
            waited = time.perf_counter()
            images, labels, indices = next(batches)
            data_wait.append((time.perf_counter() - waited) * 1000.0)
            begins.append(clock.mark())
            trainer.train_step(images, labels, indices)
            ends.append(clock.mark())
        starts.append(clock.mark())
    clock.sync()
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start

    periods = [clock.ms(a, b) for a, b in zip(starts, starts[1:])]
    compute = [clock.ms(b, e) for b, e in zip(begins, ends)]
    images_per_step = trainer.s.batch_size * trainer.dist.world_size
    if peak is None:
        peak, peak_basis = peak_tflops(device, trainer.s.amp_dtype)
    else:
        peak_basis = "given"
    achieved = flops * trainer.dist.world_size * steps / wall / 1e12
    memory, memory_kind = _peak_memory_mb(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "world_size": trainer.dist.world_size,
        "batch_size": trainer.s.batch_size,
        "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.s.amp_dtype],
        "channels_last": trainer.s.channels_last,
        "compiled": trainer.model.compiled_backbone is not None,
        "fused_optimizer": bool(trainer.optimizer.defaults.get("fused")),
        "reuse_cpu_memory": trainer.s.config["trainer"]["reuse_cpu_memory"] and device.type == "cpu",
        "cpu_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "warmup_steps": warmup,
        "steps": steps,
        "images_per_s": images_per_step * steps / wall,
        "ms_per_step": _spread(periods),
        "compute_ms_per_step": _spread(compute),
        "data_wait_ms_per_step": _spread(data_wait),
        "data_wait_fraction": sum(data_wait) / 1000.0 / wall,
        "host_syncs_per_step": None if syncs is None else len(syncs) / steps,
        "process_cpu_s_per_step": cpu / steps,
        "peak_memory_mb": memory,
        "peak_memory_kind": memory_kind,
        "gflop_per_step": flops / 1e9,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "peak_basis": peak_basis,
        "mfu": achieved / peak if peak else None,
    }
