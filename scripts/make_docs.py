"""Re-make every figure of README.md and docs/ and write it into the page's generated block, stamped with the
machine and date.

    nice -n 10 python scripts/make_docs.py                  # everything (about three hours on 2 CPU cores)
    python scripts/make_docs.py --only sweep,heads          # some blocks
    python scripts/make_docs.py --quick --docs /tmp/copy    # tiny runs: checks the machinery, not the figures

Blocks: ``quickstart`` (README.md: ``python train.py``), ``finetune`` (docs/weights.md, with
``finetune_synthetic.png``: fine-tuning against training from scratch over ``--seeds`` seeds), ``sweep``
(docs/sweeps.md: the three-head smoke sweep) and ``heads`` (docs/heads.md: ``target_logits.png``,
``angular_margins.png``, ``x2softmax_margin.png`` and X2-Softmax's margins) and ``distill`` (README.md, with
``docs/distillation.png``: an IResNet-18 teacher, a small MobileFaceNet student without a teacher and with each
distillation loss over ``--distill-seeds`` seeds). Training runs are started as
``python train.py ...`` in a new folder under ``--work`` (their data generated there too); fine-tuning starts
from the quick start's run. ``--quick`` trains a few steps on a tiny set: its pages are for tests, not for
committing.
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Optional

import torch

from facetrain.cli import run_script, script_parser
from facetrain.docs_figures import distill, finetune, heads_page, quickstart, sweep_example
from facetrain.docs_figures.pages import stamp, write_blocks
from facetrain.errors import FacetrainError

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("quickstart", "finetune", "sweep", "heads", "distill")


def make(parts: list[str], docs: Path, work: Path, seeds: list[int], quick: bool, finetune_epochs: int,
         pretrained: Optional[Path] = None, distill_seeds: tuple[int, ...] = (0,),
         teacher: Optional[Path] = None) -> list[Path]:
    """Measure ``parts`` (figures drawn into ``docs/docs``) and write each part's blocks as soon as it is done;
    fine-tuning starts from ``pretrained`` (a quick-start run) and the students learn from ``teacher`` (a run
    directory) where given. Returns the pages rewritten."""
    work.mkdir(parents=True)
    now = stamp()
    written: set[Path] = set()

    def write(blocks: dict[str, str]) -> None:
        for page in write_blocks(docs, blocks):
            print(f"rewrote {page}", flush=True)
            written.add(page)

    if "heads" in parts:
        pictures = heads_page.measure(docs / "docs", quick)
        write({"x2softmax_margin": heads_page.margin_block(pictures, now),
               "head_pictures": heads_page.pictures_block(pictures, now)})
    if "sweep" in parts:
        write({"sweep": sweep_example.block(sweep_example.measure(work, quick), now)})
    if "quickstart" in parts or "finetune" in parts:
        start = quickstart.read(pretrained) if pretrained and "quickstart" not in parts else quickstart.measure(work, quick)
        if "quickstart" in parts:
            write({"quickstart": quickstart.block(start, now)})
        if "finetune" in parts:
            tuned = finetune.measure(work, start.run_dir, seeds, quick, finetune_epochs)
            finetune.picture(tuned, docs / "docs" / "finetune_synthetic.png")
            write({"finetune": finetune.block(tuned, now, quickstart.describe(start))})
    if "distill" in parts:
        distilled = distill.measure(work / "distill", list(distill_seeds), quick, teacher)
        distill.picture(distilled, docs / "docs" / "distillation.png")
        write({"distill": distill.block(distilled, now)})
    return sorted(written)


def main(argv: Optional[list[str]] = None) -> int:
    parser = script_parser("make_docs", __doc__)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    parser.add_argument("--docs", type=Path, default=ROOT, help="the folder holding README.md and docs/")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "make_docs",
                        help="runs go to a new folder under it, named after the start time")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each fine-tuning run (at least 2)")
    parser.add_argument("--finetune-epochs", type=int, default=finetune.RECIPE_EPOCHS,
                        help="epochs of each fine-tuning run (fewer than the recipe's are said in the text)")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="with --only finetune: fine-tune this quick-start run (outputs/.../mbf_arcface_synthetic/"
                             "<run>) instead of training one")
    parser.add_argument("--distill-seeds", type=int, default=3, help="seeds of each distillation student")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="with --only distill: the students learn from this run (outputs/distill_teacher/<run>, "
                             "trained as make_docs trains it) instead of a new one")
    parser.add_argument("--quick", action="store_true", help="a few steps on a tiny set (tests the machinery)")
    args = parser.parse_args(argv)
    parts = [part for part in args.only.split(",") if part]

    def work() -> None:
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise FacetrainError(f"--only names {', '.join(unknown)}", f"choose from {', '.join(PARTS)}")
        if args.quick and args.docs.resolve() == ROOT:
            raise FacetrainError("--quick would write a tiny run's figures into the repository's pages",
                                 "pass --docs with a copy of README.md and docs/")
        if args.seeds < 2:
            raise FacetrainError(f"--seeds {args.seeds} gives no spread", "pass --seeds 2 or more")
        if args.distill_seeds < 1:
            raise FacetrainError(f"--distill-seeds {args.distill_seeds} trains no student", "pass --distill-seeds 1 or more")
        torch.set_num_threads(1)  # the pictures' forward passes are tiny; training runs in its own processes
        folder = args.work / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        make(parts, args.docs, folder, list(range(args.seeds)), args.quick, args.finetune_epochs, args.pretrained,
             tuple(range(args.distill_seeds)), args.teacher)

    return run_script("make_docs", work)


if __name__ == "__main__":
    sys.exit(main())
