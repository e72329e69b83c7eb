"""Benchmarks, one subcommand each:

    python scripts/benchmark.py data ROOT [--workers 1 2 4] [--batch-size 128] [--augment KEY=VALUE ...]
    python scripts/benchmark.py head [--num-classes 2000000] [--world-size 1 2 4 8] [--sample-rate 0.1]
    python scripts/benchmark.py ijb [--backbone r100] [--images 469375 --templates 23124 --pairs 15658489]
    python scripts/benchmark.py train [--data synthetic|real] [--warmup 5] [--steps 20] [HYDRA OVERRIDES ...]
    python scripts/benchmark.py backbones [NAMES ...] [--timm MODEL ...] [--embedding-size 512]
    python scripts/benchmark.py align [--photos DIR] [--side 1000] [--reference POINTS.txt]
    python scripts/benchmark.py noisy make OUT | score OUT CLEAN_DIR | cost DATASET

``data``: how fast the input pipeline feeds a GPU from a dataset folder (a RecordIO folder, identity
folders or a list file): single-core decode speed of each JPEG decoder, one core's dataset speed
(read + decode + augmentation), and DataLoader images/s in total (wall clock) and per worker (per
second of the workers' CPU time, which other load on the machine does not distort).

``head``: memory per rank and step time of the classification layer at a given number of classes: the
whole head on one process, the head split over N ranks (model parallel), and Partial FC. Ranks are
processes joined by NCCL on GPUs when there are enough, else by gloo on the CPU (one thread each; step
time is then CPU seconds per rank, which other load on the machine does not distort).

``ijb``: the stages of an IJB 1:1 evaluation at IJB-C's scale (random features, templates and
pairs; synthetic loose crops): alignment per core, embedding images/s on the GPU (or CPU), and the
seconds of template pooling, pair scoring and the ROC.

``train``: the real training step (``Trainer.train_step``: device-side flip and normalisation,
backbone, head, loss, backward, optimizer, schedule) of the config that ``train.py`` would compose
from the same overrides, on random in-memory batches (``--data synthetic``, the default) or on the
dataset through the trainer's DataLoader (``--data real``). Prints JSON: images/s, ms per step
(median and spread), data wait vs compute, peak memory, and achieved TFLOP/s and MFU against the
GPU's peak (``--peak-tflops`` for other devices).

``backbones``: parameters and forward GFLOPs (one 112x112 image) of the registered backbones and of
any timm models named, as a markdown table (docs/backbones.md's table).

``align``: raw photos to aligned crops, photos per core-second, beside facenet-pytorch's MTCNN, and the
five points' agreement with a reference.

``noisy``: synthetic faces with known noise, precision and recall of a ``clean_dataset.py`` report against it,
and the cleaning's costs that grow with the data (docs/noisy_data.md, BENCHMARKS.md).

Each command lives in its own module of :mod:`facetrain.benchmarks` . A new
command is a function ``add_<name>_command(subparsers)`` that sets ``run=`` on its parser, listed in ``COMMANDS``.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py sets it, before torch is imported

from facetrain.benchmarks.align import add_align_command  # noqa: E402
from facetrain.benchmarks.backbones import add_backbones_command  # noqa: E402
from facetrain.benchmarks.data import add_data_command  # noqa: E402
from facetrain.benchmarks.head import add_head_command  # noqa: E402
from facetrain.benchmarks.ijb import add_ijb_command  # noqa: E402
from facetrain.benchmarks.noisy import add_noisy_command  # noqa: E402
from facetrain.benchmarks.train import add_train_command  # noqa: E402
from facetrain.cli import run_script, script_parser  # noqa: E402

COMMANDS = [add_data_command, add_head_command, add_ijb_command, add_train_command, add_backbones_command,
            add_align_command, add_noisy_command]


def main(argv: Optional[list[str]] = None) -> int:
    parser = script_parser("benchmark", __doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    args = parser.parse_args(argv)
    return run_script("benchmark", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
