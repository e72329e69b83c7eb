"""Turn a released backbone into a facetrain checkpoint that every script and ``init.backbone`` accepts.

    python scripts/import_weights.py FILE [--backbone r50] --output r50.pt [--embedding-size 512]
        [--input-order auto|rgb|bgr] [--non-strict] [--check lfw.bin ...] [--device auto] [--batch-size 256]

FILE is arcface_torch's ``backbone.pth`` (r18 ... r200, mbf, mbf_large, vit_*; with or without a
``module.`` prefix, fp16 or fp32), AdaFace's Lightning ``.ckpt`` (IR / IR-SE), torchvision's ImageNet
weights of resnet50 / mobilenet_v2 / mobilenet_v3_large (the body; the face embedding layer starts new,
so ``--non-strict`` is needed), a ``.safetensors`` export of facetrain, or a facetrain checkpoint. Its
layout is recognised from its keys (``--backbone`` is checked against it); it is read as data, never run.

Models trained on BGR input (AdaFace's: ``--input-order auto`` knows them) get their first convolution's
input channels reversed, so the checkpoint takes RGB like every facetrain model. ``--check`` evaluates the
imported model on verification sets with RGB and BGR input, with and without the mirror image, and warns
when facetrain's convention (RGB, image + mirror) is not the best: a wrong channel order or alignment
costs whole points of accuracy.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from facetrain.cli import compose_train_config, run_script, script_parser
from facetrain.data import resolve_targets
from facetrain.data.transforms import INPUT_CONVENTION
from facetrain.files import file_sha256
from facetrain.plural import counted
from facetrain.runs.checkpoint import save_checkpoint
from facetrain.errors import ModelError
from facetrain.eval import VerificationCallback
from facetrain.eval.options import embedding_device
from facetrain.weights import CHANNEL_ORDERS, build_loaded, read_layout
from facetrain.eval.input_check import convention_accuracies, convention_warnings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = script_parser("import_weights", __doc__)
    parser.add_argument("file", type=Path, help="the released weights (or a facetrain checkpoint / run directory)")
    parser.add_argument("--output", type=Path, required=True, help="the facetrain checkpoint to write (.pt)")
    parser.add_argument("--backbone", help="the facetrain backbone (default: the one the file's keys show)")
    parser.add_argument("--embedding-size", type=int, help="for files without an embedding layer (default 512)")
    parser.add_argument("--input-order", choices=CHANNEL_ORDERS, default="auto",
                        help="the channel order the file's model was trained on (auto: AdaFace BGR, others RGB)")
    parser.add_argument("--non-strict", dest="strict", action="store_false",
                        help="allow tensors the file does not provide (they start fresh, listed in the log)")
    parser.add_argument("--check", nargs="+", default=[], metavar="BIN", help="verification .bin sets to check on")
    parser.add_argument("--device", default="auto", help="for --check: auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=256, help="for --check: images per forward pass")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> int:
        if args.output.resolve() == args.file.resolve():
            raise ModelError(f"--output {args.output} is the file being imported", "write the checkpoint elsewhere")
        found = read_layout(args.file)
        layout = found.layout
        name = args.backbone or layout.backbone
        size = args.embedding_size or layout.embedding_size or 512
        hparams = backbone_settings(name, size, layout.hparams if name == layout.backbone else {})
        backbone, left_out = build_loaded(found, name, hparams, size, args.input_order, args.strict)
        print(f"{args.file}: {layout.description} -> facetrain {name}, {size}-d embeddings"
              + (f"; {counted(len(left_out), 'tensor')} start fresh" if left_out else ""))
        state = {"backbone": backbone.state_dict(), "config": {"backbone": {"name": name, **hparams}, "embedding_size": size},
                 "input": INPUT_CONVENTION, "imported_from": {"file": str(args.file), "sha256": file_sha256(found.file.path),
                                                             "layout": layout.description}}
        save_checkpoint(state, args.output)
        print(f"wrote {args.output}")
        if args.check:
            return check(backbone, args)
        return 0

    return run_script("import_weights", work)


def backbone_settings(name: str, embedding_size: int, given: dict[str, Any]) -> dict[str, Any]:
    """The settings of backbone ``name``: its config's defaults, then the ``given`` values (read from a file)
    as they are. They never pass through Hydra's override strings, where ``${...}``, commas, brackets or
    quotes would be parsed (an interpolation resolved, a sweep, a list) instead of kept."""
    cfg = compose_train_config([f"backbone={name}", f"embedding_size={embedding_size}"], CONFIGS)
    defaults = OmegaConf.to_container(cfg.backbone, resolve=True)
    return {**{key: value for key, value in defaults.items() if key != "name"}, **given}


def check(backbone, args: argparse.Namespace) -> int:
    """Print the accuracy of every input convention on the ``--check`` sets; warn where ours is not the best."""
    device = embedding_device(args.device)
    callback = VerificationCallback(resolve_targets(args.check, Path(".")), device, args.batch_size)
    results = convention_accuracies(backbone.to(device).eval(), callback)
    print(f"{'input':<6} {'flip':<5} " + " ".join(f"{target:>12}" for target in callback.sets))
    for (order, flip), result in results.items():
        print(f"{order:<6} {flip:<5} " + " ".join(f"{100 * r['accuracy']:>11.2f}%" for r in result.values()))
    for line in convention_warnings(results):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
