"""Export a checkpoint's backbone to ONNX and check it against PyTorch with onnxruntime.

    python scripts/export_onnx.py CHECKPOINT_OR_RUN_DIR --output model.onnx [--opset 17]

The model maps ``input`` float32 ``[N,3,112,112]`` (RGB, ``(x/255 - 0.5) / 0.5``) to the raw
``embedding`` ``[N, d]``, with ``N`` dynamic. The check runs both on random inputs of two batch sizes
and reports the largest absolute difference; the command fails (exit 1, the file kept for
inspection) if it exceeds 1e-4 of the largest output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from facetrain import load_backbone
from facetrain.cli import run_script, script_parser
from facetrain.export import OPSET, PARITY_TOLERANCE, check_onnx, export_onnx
from facetrain.runs.run_dir import find_checkpoint


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("export_onnx", __doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file or a run directory (its newest checkpoint)")
    parser.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset version")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> int:
        checkpoint = find_checkpoint(args.checkpoint)
        backbone = load_backbone(checkpoint)
        export_onnx(backbone, args.output, args.opset)
        parity = check_onnx(backbone, args.output)
        print(f"export_onnx: wrote {args.output} from {checkpoint}; onnxruntime vs PyTorch on batches of "
              f"{' and '.join(map(str, parity.batch_sizes))}: max abs diff {parity.max_abs_diff:.3g} "
              f"({parity.relative:.3g} of the largest output {parity.max_abs_output:.3g})")
        if not parity.ok:
            print(f"export_onnx: error: the ONNX model differs from PyTorch by {parity.relative:.3g} relative, more than "
                  f"{PARITY_TOLERANCE:g}; {args.output} is kept for inspection (try another --opset)", file=sys.stderr)
            return 1
        return 0

    return run_script("export_onnx", work)


if __name__ == "__main__":
    sys.exit(main())
