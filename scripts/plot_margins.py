"""Pictures of every loss head (the X2-Softmax paper's figures 3 and 4), computed by the heads themselves.

    python scripts/plot_margins.py --out outputs/plots

Writes ``target_logits.png`` (the target logit against the angle to the class centre, one panel per family
of heads), ``angular_margins.png`` (the angle between two classes' decision boundaries against the angle of
their centres) and ``x2softmax_margin.png`` (X2-Softmax's boundary and margin); how each is computed:
``facetrain/docs_figures/head_curves.py``. ``scripts/make_docs.py`` draws the same pictures into docs/.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch

from facetrain.cli import run_script, script_parser
from facetrain.docs_figures.head_curves import margin_curves, target_logits, x2softmax_picture
from facetrain.heads import HEADS


def main(argv: Optional[list[str]] = None) -> int:
    parser = script_parser("plot_margins", __doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/plots"), help="folder for the PNGs")
    parser.add_argument("--heads", default=",".join(HEADS.names()), help="comma-separated head names")
    parser.add_argument("--points", type=int, default=2001, help="probe angles per boundary search")
    parser.add_argument("--angles", type=int, default=90, help="angles between the centres in the margin plots")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest at this size)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = [name for name in args.heads.split(",") if name]

    def draw() -> None:
        for path in (target_logits(args.out, names), margin_curves(args.out, names, args.points, args.angles),
                     x2softmax_picture(args.out, args.points, args.angles)):
            print(path)

    return run_script("plot_margins", draw)


if __name__ == "__main__":
    sys.exit(main())
