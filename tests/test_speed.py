"""Speed switches keep results, the step reads nothing on the host, and scripts/benchmark.py train
measures the real step. Speed itself is measured with the benchmark, never asserted here."""
from __future__ import annotations

import importlib.util
import json
import logging
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from facetrain.cli import compose_train_config
from facetrain.data import TrainData
from facetrain.data.datasets import FaceDataset
from facetrain.parallel.groups import DistInfo
from facetrain.engine.step_benchmark import (PEAK_TFLOPS, RandomFaces, gpu_model, in_memory_batches, peak_tflops,
                                             step_flops)
from facetrain.config.checks import check_config
from facetrain.errors import ConfigError, DataError
from facetrain.train import build_trainer, seed_everything
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "benchmark.py"
CPU = torch.device("cpu")
# a small MobileFaceNet: every layer kind of the real one (3x3, depthwise, 1x1 convs, BN, PReLU)
SMALL = ["experiment=smoke", "backbone.blocks=[1,1,1,1]", "backbone.scale=1", "embedding_size=32",
         "trainer.batch_size=2", "trainer.precision=fp32", "trainer.device=cpu", "eval.at_start=false",
         "scheduler.warmup_epochs=0", "optimizer.lr=0.01"]  # at lr 0.1 two steps of ArcFace are already chaotic


def small_trainer(tmp_path: Path, *overrides: str, dataset=None):
    cfg = compose_train_config([*SMALL, *overrides], REPO / "configs")
    check_config(cfg)
    seed_everything(cfg.seed)
    dataset = dataset if dataset is not None else RandomFaces(16, cfg.dataset.num_classes)
    data = TrainData(dataset, cfg.dataset.num_classes, tmp_path)
    return build_trainer(cfg, data, tmp_path, DistInfo(), CPU, evaluate=False)


def state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def trained_weights(tmp_path: Path, *overrides: str, steps: int = 2) -> tuple[dict, dict]:
    """The model's state before and after ``steps`` optimizer steps."""
    trainer = small_trainer(tmp_path, *overrides)
    before = state(trainer)
    batches = in_memory_batches(trainer.dataset, trainer.s.batch_size, steps, CPU)
    for _ in range(steps):
        trainer.train_step(*next(batches))
    return before, state(trainer)


ATOL = 5e-5


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Within ``ATOL`` plus 1e-4 relative; BatchNorm's running variance (of two samples here, where
    rounding differences in the features grow most) within 1e-3 relative."""
    assert a.keys() == b.keys()
    for key in a:
        rtol = 1e-3 if key.endswith("running_var") else 1e-4
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=ATOL, msg=lambda m: f"{key}: {m}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Two steps with every speed switch off; they move the weights ten times the tolerance or more."""
    before, after = trained_weights(tmp_path_factory.mktemp("reference"), "trainer.channels_last=false",
                                    "trainer.fused_optimizer=false")
    for key in ("head.weight", "backbone.body.0.0.weight"):
        assert (after[key] - before[key]).abs().max() > 10 * ATOL, key
    return after


@pytest.mark.parametrize("switch, other", [("channels_last", "fused_optimizer"), ("fused_optimizer", "channels_last")])
def test_speed_switches_keep_training_results(tmp_path, reference, switch, other):
    _, weights = trained_weights(tmp_path, f"trainer.{switch}=true", f"trainer.{other}=false")
    assert_close_states(weights, reference)


MALLOC_PROBE = """
import ctypes, sys, torch
from facetrain.cpu_memory import reuse_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = sys.argv[1] == "on" and reuse_freed_memory()
tensor = torch.empty(256 * 2**20, dtype=torch.uint8)
mapped = libc.mallinfo2().hblkhd
del tensor
print(applied, mapped, libc.mallinfo2().fordblks)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere the switch does nothing")
def test_reuse_freed_memory_keeps_large_tensors_in_the_heap():
    """Without it glibc maps a 256 MB tensor from the kernel and unmaps it when freed; with it the tensor
    comes from malloc's heap and its memory stays there, free for the next step."""
    def probe(mode: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    size = 256 * 2**20
    applied, mapped, free_after = probe("off")
    assert applied == "False" and int(mapped) >= size and int(free_after) < size
    applied, mapped, free_after = probe("on")
    assert applied == "True" and int(mapped) < size and int(free_after) >= size


@pytest.mark.slow  # inductor compiles the small MobileFaceNet for about 7 minutes on the 2-core CPU
def test_compile_keeps_training_results(tmp_path, reference):
    _, weights = trained_weights(tmp_path, "trainer.channels_last=false", "trainer.fused_optimizer=false",
                                 "trainer.compile=true")
    assert_close_states(weights, reference)  # also: the same state_dict keys, so checkpoints load either way
    plain, compiled = small_trainer(tmp_path).model, small_trainer(tmp_path, "trainer.compile=true").model
    assert plain.compiled_backbone is None and compiled.compiled_backbone is not None
    assert type(compiled.backbone) is type(plain.backbone)  # what evaluation calls: not compiled




@pytest.mark.parametrize("override, expected", [
    ("trainer.compile_mode=fastest", r"trainer.compile_mode=fastest is out of range \(one of default, reduce-overhead"),
    ("trainer.ddp_bucket_cap_mb=0", r"trainer.ddp_bucket_cap_mb=0.0 is out of range \(a number > 0\)")])
def test_bad_speed_settings_are_refused_naming_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        check_config(compose_train_config([override], REPO / "configs"))


class HostReads(TorchFunctionMode):
    """Records every read of a tensor's value by the host: on a GPU each one is a device sync."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"}

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [True, False])
def test_the_step_reads_no_tensor_on_the_host_with_the_fused_optimizer(tmp_path, fused):
    trainer = small_trainer(tmp_path, f"trainer.fused_optimizer={str(fused).lower()}", "trainer.grad_clip=5")
    batches = in_memory_batches(trainer.dataset, trainer.s.batch_size, 2, CPU)
    trainer.train_step(*next(batches))
    with HostReads() as mode:
        trainer.train_step(*next(batches))
    # unfused, GradScaler.step asks the host whether a gradient was inf (.item(): a sync per step on CUDA)
    assert mode.reads == ([] if fused else ["item"])


def test_flop_count_matches_the_formula(tmp_path):
    """Linear backbone ``in -> d`` and a ``C``-class margin head, batch ``N``: forward ``2N*in*d +
    2N*d*C``; backward the weight gradients of both (same again) and the embedding gradient ``2N*d*C``
    (the images need none); the head's diagnostics add the cosine to each target centre, ``2N*d``."""
    trainer = small_trainer(tmp_path, "trainer.channels_last=false")
    trainer.model.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 112 * 112, 32))
    n, inputs, d, classes = 2, 3 * 112 * 112, 32, trainer.model.head.num_classes
    batch = next(in_memory_batches(trainer.dataset, n, 1, CPU))
    assert step_flops(trainer, batch) == 2 * (2 * n * inputs * d) + 3 * (2 * n * d * classes) + 2 * n * d
    assert all(p.grad is None for p in trainer.model.parameters())


def test_flop_count_of_a_grouped_convolution(tmp_path):
    """A depthwise-style convolution (3 groups, 2 filters each, 3x3, no padding loss at stride 1)
    costs ``2N*HW*6*9`` forward and the same again for its weight gradient (the images need no
    input gradient); torch's own backward formula would count it as a dense ``3 -> 6`` convolution.
    The linear layer after it also back-propagates into the convolution's output."""
    trainer = small_trainer(tmp_path, "trainer.channels_last=false")
    hw, d = 112 * 112, 32
    trainer.model.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, groups=3, bias=False), nn.Flatten(),
                                           nn.Linear(6 * hw, d))
    n, classes = 2, trainer.model.head.num_classes
    batch = next(in_memory_batches(trainer.dataset, n, 1, CPU))
    conv = 2 * n * hw * 6 * 9
    linear = 2 * n * 6 * hw * d
    head = 3 * (2 * n * d * classes) + 2 * n * d
    assert step_flops(trainer, batch) == 2 * conv + 3 * linear + head


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", None),
    ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"), ("NVIDIA GeForce RTX 4090", None)])
def test_gpu_names_map_to_their_peak(name, model):
    assert gpu_model(name) == model
    assert model is None or PEAK_TFLOPS[model]["bf16"] > PEAK_TFLOPS[model]["tf32"] > PEAK_TFLOPS[model]["fp32"]


def test_cpu_has_no_listed_peak():
    assert peak_tflops(CPU, None) == (None, None)


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = sys.modules["benchmark"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_benchmark_prints_the_figures(capsys):
    _benchmark_module().main(["train", "--warmup", "0", "--steps", "2", "--peak-tflops", "0.5", *SMALL,
                              "trainer.fused_optimizer=false"])
    result = json.loads(capsys.readouterr().out)
    assert result["backbone"] == "mbf" and result["data"] == "synthetic" and result["steps"] == 2
    assert result["batch_size"] == 2 and result["precision"] == "fp32" and result["fused_optimizer"] is False
    assert result["images_per_s"] > 0 and result["gflop_per_step"] > 0
    step = result["ms_per_step"]
    assert step["min"] <= step["p10"] <= step["median"] <= step["p90"] <= step["max"]
    assert result["compute_ms_per_step"]["median"] <= step["max"]
    assert 0 <= result["data_wait_fraction"] < 1 and result["host_syncs_per_step"] is None  # counted on CUDA
    assert result["mfu"] == pytest.approx(result["achieved_tflops"] / 0.5)
    assert result["achieved_tflops"] == pytest.approx(result["gflop_per_step"] * result["images_per_s"] / 2 / 1e3)
    assert result["peak_memory_kind"] == "peak RSS of the process" and result["peak_memory_mb"] > 0


@pytest.mark.slow  # about a minute on the 2-core CPU, several when it is shared
def test_the_benchmarked_cpu_step_counts_the_flops_of_the_recorded_figure(capsys):
    """The configuration of BENCHMARKS.md's CPU figure (mbf at scale 2, batch 32): its FLOPs per step are exact.
    Its speed is measured with scripts/benchmark.py and recorded there, never asserted by a test."""
    _benchmark_module().main(["train", "--warmup", "1", "--steps", "3", "backbone=mbf", "backbone.scale=2",
                              "trainer.batch_size=32", "trainer.precision=fp32", "trainer.device=cpu"])
    result = json.loads(capsys.readouterr().out)
    assert result["gflop_per_step"] == pytest.approx(82.636439552, rel=1e-9)


def test_train_benchmark_refuses_a_bad_override_in_one_line(capsys):
    assert _benchmark_module().main(["train", "trainer.compiled=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("benchmark: error: unknown config key 'trainer.compiled'"), err


# ---- what the trainer logs ------------------------------------------------------------------------------
class PartlyBroken(FaceDataset):
    """4 random images of 4 identities; samples 1 and 3 cannot be read."""

    num_classes = 4

    def __init__(self) -> None:
        super().__init__(transform=None, max_bad_fraction=0.5)
        self.images = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return 4

    def where(self, index: int) -> str:
        return f"image {index}"

    def load(self, index: int):
        if index in (1, 3):
            raise DataError("cannot be decoded")
        return self.images[index], index % 4


def test_bad_samples_and_start_up_time_are_logged(tmp_path, caplog):
    trainer = small_trainer(tmp_path, "trainer.max_steps=2", "dataset.num_classes=4", "checkpoint.every_steps=0",
                            dataset=PartlyBroken())
    with caplog.at_level(logging.INFO, logger="facetrain"):
        trainer.fit()
    lines = caplog.text.splitlines()
    assert any("step 1: first optimizer step done" in line and "s after the process started" in line for line in lines)
    assert "step 2: epoch 1 done, 2 unreadable samples skipped so far" in caplog.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("data/bad_samples")] == [(2, 2.0)]
