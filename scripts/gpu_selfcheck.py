"""Check a new GPU box in minutes: the training step of r50 and mbf in bf16 and fp16 with forced gradient
overflows, torch.compile on and off, an NCCL run when more than one GPU is visible, and the speed of the
step as ``scripts/benchmark.py train`` measures it. Prints one table; exits 1 if any check fails.

    python scripts/gpu_selfcheck.py                  # about 3-5 minutes on one modern GPU
    python scripts/gpu_selfcheck.py --json out.json  # the table's rows as JSON too

On a machine without CUDA it runs the same checks on the CPU at a tiny size (a small MobileFaceNet, a
few steps) and marks what needs a GPU as SKIP, saying why: that is how CI checks this script.

A training check trains ``--steps`` optimizer steps on a pool of fixed random batches (which the model
can memorise, so the loss must fall), with an Inf written into a backbone gradient at three steps: each
must be skipped on the device (weights unchanged), the weights must stay finite, and in bf16 exactly the
forced steps are skipped (fp16 also skips its own overflows while its loss scale settles).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py sets it, before torch is imported

import torch

from facetrain.cli import compose_train_config, script_parser
from facetrain.data import TrainData
from facetrain.parallel.groups import DistInfo
from facetrain.engine.step_benchmark import RandomFaces, in_memory_batches, time_training
from facetrain.engine.trainer import Trainer
from facetrain.train import build_trainer, check_training_config, seed_everything

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CLASSES, POOL = 64, 4  # identities and distinct batches the model memorises


@dataclass
class Row:
    check: str
    status: str  # PASS, FAIL or SKIP
    figure: str = ""
    seconds: float = 0.0
    note: str = ""


class CheckFailed(Exception):
    """A check's condition did not hold."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Size:
    """How big the checks are: a real GPU run, or a CPU run that only proves the paths work."""

    device: str
    backbones: dict[str, list[str]]  # name -> its overrides
    batch_size: int
    steps: int
    speed_steps: int

    @staticmethod
    def for_machine(steps: Optional[int]) -> "Size":
        if torch.cuda.is_available():
            return Size("cuda", {"r50": ["backbone=r50"], "mbf": ["backbone=mbf", "backbone.scale=2"]}, 128,
                        steps or 200, 20)
        small_mbf = ["backbone=mbf", "backbone.blocks=[1,1,1,1]", "backbone.scale=1", "embedding_size=64"]
        return Size("cpu", {"mbf": small_mbf}, 4, steps or 24, 3)  # fp16 CPU convolutions are slow: batch 4


def trainer_for(size: Size, backbone: str, precision: str, run_dir: Path, *extra: str) -> tuple[Trainer, object]:
    """``build_trainer`` on random in-memory batches, as ``scripts/benchmark.py train`` runs it."""
    overrides = [*size.backbones[backbone], f"trainer.precision={precision}", f"trainer.batch_size={size.batch_size}",
                 f"dataset.num_classes={CLASSES}", "eval.targets=[]", "scheduler.warmup_epochs=0", "optimizer.lr=0.05",
                 f"trainer.device={size.device}", "trainer.num_workers=0", "trainer.progress_bar=false", *extra]
    cfg = compose_train_config(overrides, CONFIGS)
    check_training_config(cfg)
    seed_everything(cfg.seed)
    data = TrainData(RandomFaces(POOL * size.batch_size, CLASSES), CLASSES, Path())
    trainer = build_trainer(cfg, data, run_dir, DistInfo(), torch.device(size.device), evaluate=False)
    return trainer, in_memory_batches(data.dataset, size.batch_size, POOL, trainer.s.device)


def force_overflows(trainer: Trainer, steps: set[int]) -> None:
    """Write an Inf into a backbone gradient before the scaler looks at them, at ``steps`` (1-based)."""
    unscale = trainer.scaler.unscale_

    def poisoned(optimizer: torch.optim.Optimizer) -> None:
        if trainer.step + 1 in steps:
            grad = next(p for p in trainer.model.backbone.parameters() if p.grad is not None).grad
            grad[(0,) * grad.dim()] = float("inf")  # any memory format (channels_last)
        unscale(optimizer)

    trainer.scaler.unscale_ = poisoned


def check_training(size: Size, backbone: str, precision: str, run_dir: Path) -> str:
    trainer, batches = trainer_for(size, backbone, precision, run_dir)
    forced = {2, size.steps // 2, size.steps - 1}
    force_overflows(trainer, forced)
    trainer.model.train()
    window, losses, skipped = max(1, size.steps // 8), [], 0
    for step in range(1, size.steps + 1):
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()} if step in forced else None
        trainer.train_step(*next(batches))
        if before is not None:
            expect(all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters()),
                   f"the forced overflow at step {step} changed the weights")
        if step % window == 0:
            means, window_skipped = trainer.window.read()
            losses.append(means["loss"])
            skipped += window_skipped
            trainer.window.clear(step)
    expect(all(torch.isfinite(p).all() for p in trainer.model.parameters()), "the weights hold NaN/Inf")
    expect(skipped >= len(forced), f"{skipped} steps skipped, fewer than the {len(forced)} forced overflows")
    if precision == "bf16":
        expect(skipped == len(forced), f"bf16 skipped {skipped} steps, {len(forced)} were forced")
    # fp16 halves its scale from 2^16 on its own overflows (at most 16 times before 1), and overflows again
    # at most once per growth interval when it tries a larger scale
    natural = 16 + size.steps // trainer.scaler.get_growth_interval() if precision == "fp16" else 0
    expect(skipped <= len(forced) + natural, f"{skipped} of {size.steps} steps skipped")
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    expect(last < first, f"the loss did not fall on memorisable batches: {first:.3f} -> {last:.3f}")
    scale = f", loss scale {trainer.scaler.get_scale():g}" if precision == "fp16" else ""
    return f"loss {first:.2f} -> {last:.2f}, {skipped} skipped{scale}"


def check_compile(size: Size, run_dir: Path) -> str:
    backbone = "mbf"
    losses = {}
    for compiled in (False, True):
        trainer, batches = trainer_for(size, backbone, "bf16", run_dir / str(compiled), f"trainer.compile={compiled}")
        trainer.model.train()
        start = time.perf_counter()
        for _ in range(3):
            trainer.train_step(*next(batches))
        losses[compiled] = (trainer.window.read()[0]["loss"], time.perf_counter() - start)
    (eager, _), (compiled, seconds) = losses[False], losses[True]
    expect(abs(compiled - eager) <= 0.02 * abs(eager) + 1e-3, f"compiled loss {compiled:.4f} vs eager {eager:.4f}")
    return f"3-step loss {eager:.4f} eager, {compiled:.4f} compiled; compiled in {seconds:.0f} s"


def check_nccl(run_dir: Path) -> str:
    gpus = min(torch.cuda.device_count(), 8)
    command = [shutil.which("torchrun") or "torchrun", "--standalone", f"--nproc_per_node={gpus}", str(REPO / "train.py"),
               f"output_root={run_dir}", "experiment=smoke", "trainer.precision=fp16", "trainer.max_steps=20",
               "eval.at_start=false"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    expect(result.returncode == 0, (result.stderr.strip().splitlines() or ["no output"])[-1])
    return f"{gpus} ranks, fp16, sharded head: 20 steps"


def check_speed(size: Size, backbone: str, run_dir: Path) -> str:
    trainer, batches = trainer_for(size, backbone, "bf16", run_dir)
    result = time_training(trainer, batches, warmup=3, steps=size.speed_steps)
    mfu = f", MFU {result['mfu']:.0%}" if result["mfu"] else ""
    return f"{result['images_per_s']:.0f} img/s, {result['ms_per_step']['median']:.1f} ms/step (batch {size.batch_size}){mfu}"


def run_check(rows: list[Row], name: str, work: Callable[[], str]) -> None:
    start = time.perf_counter()
    try:
        rows.append(Row(name, "PASS", work(), time.perf_counter() - start))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row, the rest still run
        if not isinstance(exc, CheckFailed):
            traceback.print_exc()
        rows.append(Row(name, "FAIL", seconds=time.perf_counter() - start, note=f"{type(exc).__name__}: {exc}"))
    print(f"{rows[-1].status} {name} ({rows[-1].seconds:.1f} s) {rows[-1].figure}{rows[-1].note}", file=sys.stderr)


def run_checks(size: Size, work_dir: Path) -> list[Row]:
    rows: list[Row] = []
    if size.device != "cuda":
        rows.append(Row("train r50 bf16/fp16", "SKIP", note="CUDA only: r50 trains at about 1 image/s on a 2-core CPU (r18: 2.3, BENCHMARKS.md)"))
    for backbone in size.backbones:
        for precision in ("bf16", "fp16"):
            run_check(rows, f"train {backbone} {precision}",
                      lambda b=backbone, p=precision: check_training(size, b, p, work_dir / f"{b}_{p}"))
    if size.device == "cuda":
        run_check(rows, "torch.compile on/off", lambda: check_compile(size, work_dir / "compile"))
    else:
        rows.append(Row("torch.compile on/off", "SKIP", note="CUDA only: inductor compiles for minutes on a CPU "
                                                             "(pytest -m slow tests/test_speed.py checks it there)"))
    if size.device == "cuda" and torch.cuda.device_count() > 1:
        run_check(rows, "NCCL run", lambda: check_nccl(work_dir / "nccl"))
    else:
        rows.append(Row("NCCL run", "SKIP", note="needs 2+ CUDA GPUs (gloo runs are in the test suite)"))
    for backbone in size.backbones:
        run_check(rows, f"speed {backbone} bf16", lambda b=backbone: check_speed(size, b, work_dir / f"speed_{b}"))
    return rows


def table(rows: list[Row], device: str) -> str:
    lines = [f"facetrain GPU self-check on {device}, torch {torch.__version__}", "",
             "| check | result | figures | s | note |", "|---|---|---|---:|---|"]
    lines += [f"| {r.check} | {r.status} | {r.figure} | {r.seconds:.1f} | {r.note} |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = script_parser("gpu_selfcheck", __doc__)
    parser.add_argument("--steps", type=int, default=None, help="steps per training check (default 200 on CUDA, 24 on CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    size = Size.for_machine(args.steps)
    device = torch.cuda.get_device_name(0) if size.device == "cuda" else "the CPU (no CUDA device visible)"
    with tempfile.TemporaryDirectory() as work_dir:
        rows = run_checks(size, Path(work_dir))
    print(table(rows, device))
    if args.json is not None:
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
