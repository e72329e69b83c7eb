"""``benchmark.py train``: the real training step (``Trainer.train_step``: device-side flip and normalisation,
backbone, head, loss, backward, optimizer, schedule) of the config that ``train.py`` would compose from the same
overrides, on random in-memory batches (``--data synthetic``) or on the dataset through the trainer's DataLoader
(``--data real``). Prints JSON: images/s, ms per step, data wait vs compute, peak memory, TFLOP/s and MFU."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from facetrain.cli import compose_train_config
from facetrain.config import CONFIG_DIR
from facetrain.data import TrainData, build_train_data
from facetrain.engine.step_benchmark import RandomFaces, in_memory_batches, loader_batches, time_training
from facetrain.errors import ConfigError
from facetrain.parallel.groups import cleanup, init_distributed
from facetrain.runs.failure import describe_error
from facetrain.train import build_trainer, check_training_config, hparams, seed_everything, select_device


def run_train(args: argparse.Namespace) -> None:
    try:
        cfg = compose_train_config(args.overrides, CONFIG_DIR)
        check_training_config(cfg)
        dist = init_distributed()
        seed_everything(cfg.seed + dist.rank)
        device = select_device(cfg.trainer.device.value, dist.local_rank)
        if args.data == "real":
            data = build_train_data(cfg.dataset.name, **hparams(cfg.dataset))
        else:
            classes = cfg.dataset.num_classes or build_train_data(cfg.dataset.name, **hparams(cfg.dataset)).num_classes
            data = TrainData(RandomFaces(args.pool * cfg.trainer.batch_size * dist.world_size, classes), classes, Path())
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(describe_error(exc)) from None
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, data, Path(run_dir), dist, device, evaluate=False)
        batches = (loader_batches(trainer) if args.data == "real"
                   else in_memory_batches(data.dataset, cfg.trainer.batch_size, args.pool, device))
        result = time_training(trainer, batches, args.warmup, args.steps, args.peak_tflops)
    if dist.is_main:
        print(json.dumps({"backbone": cfg.backbone.name, "loss": cfg.loss.name, "data": args.data,
                          "overrides": args.overrides, **result}, indent=2))
    cleanup()


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="speed of the real training step (JSON)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides, as for train.py")
    parser.add_argument("--data", choices=["synthetic", "real"], default="synthetic",
                        help="random in-memory batches, or the dataset through the trainer's DataLoader")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--pool", type=int, default=4, help="distinct in-memory batches (--data synthetic)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for MFU (default: known GPUs' datasheet peak; CPU: none)")
    parser.set_defaults(run=run_train)
