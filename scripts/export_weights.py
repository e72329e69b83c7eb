"""Hand a facetrain backbone to other tools, in their weight layout.

    python scripts/export_weights.py CHECKPOINT_OR_RUN_DIR --format insightface|adaface|safetensors --output FILE

``insightface``: arcface_torch's ``backbone.pth`` (a plain state dict in its key names) of an IResNet (r*),
MobileFaceNet (mbf) or ViT (vit_*): insightface's own tools load it into their ``get_model(name)``
(e.g. its IJB evaluation). ``adaface``: AdaFace's layout of an IR / IR-SE (``ir_*``) as its Lightning
checkpoints hold it (``state_dict`` with ``model.`` prefixes), converted back to the BGR input AdaFace's
code feeds. ``safetensors``: any backbone in facetrain's keys, with its config in the file's metadata, in a
format that cannot hold code (``import_weights.py`` and ``init.backbone`` read it back).

The file is read back after writing: importing it must give tensors identical to the checkpoint's.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch

from facetrain.cli import run_script, script_parser
from facetrain.files import atomic_write
from facetrain.runs.checkpoint import load_checkpoint
from facetrain.errors import ModelError
from facetrain.runs.run_dir import find_checkpoint
from facetrain.weights import FORMATS, check_fitting, export_layout, read_layout, recognise, to_official, write_safetensors
from facetrain.weights.convert import to_facetrain
from facetrain.weights.files import checkpoint_weights

EXPORT_FORMATS = (*FORMATS, "safetensors")


def export(checkpoint: Path, fmt: str, output: Path) -> str:
    """Write ``checkpoint``'s backbone to ``output`` in ``fmt``, verify it reads back identically; a summary."""
    found = recognise(checkpoint_weights(checkpoint, load_checkpoint(checkpoint)))  # its config checked
    name, backbone, embedding_size = found.layout.backbone, found.layout.hparams, found.layout.embedding_size
    check_fitting(found, name, backbone, embedding_size)  # its tensors are the network its config names
    ours = {key: value.detach().float() if value.is_floating_point() else value for key, value in found.state.items()}
    if fmt == "safetensors":
        write_safetensors(output, ours, {"backbone": {"name": name, **backbone}, "embedding_size": embedding_size}, "RGB")
    else:
        layout = export_layout(fmt, name, backbone, embedding_size)
        official = to_official(ours, layout)
        content = {"state_dict": {f"model.{key}": value for key, value in official.items()}} if fmt == "adaface" else official
        with atomic_write(output) as f:
            torch.save(content, f)
    found = read_layout(output)
    back, _ = to_facetrain(found.state, found.layout, ours, str(output))
    if back.keys() != ours.keys() or not all(torch.equal(back[key], ours[key]) for key in ours):
        raise ModelError(f"{output} does not read back as the checkpoint's backbone", "report this as a bug")
    return f"{checkpoint}: facetrain {name} -> {output} ({fmt}, {found.layout.description}); reads back identically"


def main(argv: Optional[list[str]] = None) -> int:
    parser = script_parser("export_weights", __doc__)
    parser.add_argument("checkpoint", type=Path, help="a facetrain checkpoint file or run directory (its newest)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="the layout to write")
    parser.add_argument("--output", type=Path, required=True, help="the file to write")
    args = parser.parse_args(argv)

    def work() -> None:
        print(export(find_checkpoint(args.checkpoint), args.format, args.output))

    return run_script("export_weights", work)


if __name__ == "__main__":
    sys.exit(main())
