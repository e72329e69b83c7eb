"""scripts/make_docs.py re-makes every generated block of README.md and docs/ (``--quick``: a few steps on a tiny
set, on a copy of the pages): each block rewritten, stamped with the machine and date, in its structure; the
figures it links drawn."""
from __future__ import annotations

import datetime
import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import torch

from facetrain.docs_figures import distill
from facetrain.docs_figures.pages import block_text, replace_block, write_blocks
from facetrain.errors import FacetrainError
from facetrain.sweeps.compare import Run

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ("quickstart", "finetune", "sweep", "x2softmax_margin", "head_pictures", "distill")


def make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_pages(to: Path) -> Path:
    (to / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "README.md", to / "README.md")
    for page in (ROOT / "docs").glob("*.md"):
        shutil.copy(page, to / "docs" / page.name)
    return to


def blocks_of(root: Path) -> dict[str, str]:
    found = {}
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = page.read_text()
        found.update({name: block_text(text, name) for name in BLOCKS if block_text(text, name) is not None})
    return found


def table_rows(text: str) -> list[str]:
    """The rows of the block's tables, header and rule left out."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [row for i, row in enumerate(rows) if not re.fullmatch(r"\|(-+:?\|)+", row) and
            not (i + 1 < len(rows) and re.fullmatch(r"\|(-+:?\|)+", rows[i + 1]))]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the script sets its own


@pytest.mark.slow  # 18 train.py runs (quick start, fine-tuning over two seeds, a sweep, a teacher, 6 students): ~3 min CPU
def test_quick_run_rewrites_every_generated_block(tmp_path, restore_threads):
    pages = copy_pages(tmp_path / "pages")
    before = blocks_of(pages)
    assert set(before) == set(BLOCKS)
    for name in BLOCKS:  # a stale body that every block must lose
        page = next(p for p in [pages / "README.md", *(pages / "docs").glob("*.md")] if block_text(p.read_text(), name) is not None)
        page.write_text(replace_block(page.read_text(), name, "STALE"))

    assert make_docs().main(["--quick", "--docs", str(pages), "--work", str(tmp_path / "work"), "--seeds", "2",
                             "--distill-seeds", "1"]) == 0

    after = blocks_of(pages)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    for name in BLOCKS:
        assert "STALE" not in after[name], name
        assert after[name].startswith("Measured on ") and today in after[name].split("\n\n")[0], name
        assert "-core CPU" in after[name] and f"torch {torch.__version__}" in after[name].replace("\n", " "), name
    assert re.search(r"from \d\.\d{3} at step 0 .* at step 2;", after["quickstart"].replace("\n", " "))
    assert re.search(r"loss reads \d+\.\d at step 1", after["quickstart"].replace("\n", " "))
    finetune = table_rows(after["finetune"])
    assert [row.split("|")[1].strip()[:3] for row in finetune] == ["(a)", "(b)", "(c)"]
    assert all(re.search(r"\| \d\.\d{3} \+- \d\.\d{3} \| \d\.\d{3} / \d\.\d{3} \|", row) for row in finetune)
    assert "seeds 0, 1" in after["finetune"].replace("\n", " ") and "standard error" in after["finetune"]
    sweep = table_rows(after["sweep"])
    assert [row.split("|")[2].strip() for row in sweep] == ["`loss=arcface`", "`loss=cosface`", "`loss=x2softmax`"]
    assert all("| completed | 2 |" in row for row in sweep) and re.search(r"^Best: job \d", after["sweep"], re.M)
    margins = table_rows(after["x2softmax_margin"])
    assert [row.split("|")[1].strip() for row in margins] == ["boundary `t`", "margin `phi - 2t`"]
    assert all(len(row.split("|")) == 2 + 1 + 9 for row in margins)  # a value for each of the 9 angles
    assert "U-shaped" in after["x2softmax_margin"]
    for block, page in (("head_pictures", pages / "docs"), ("finetune", pages / "docs")):
        for picture in re.findall(r"\]\(([\w.]+\.png)\)", after[block]):
            assert (page / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    assert len(re.findall(r"\.png\)", after["head_pictures"])) == 3
    distilled = table_rows(after["distill"])
    assert [row.split("|")[1].strip() for row in distilled] == [f"`distill={loss}`" for loss in
                                                                  ("none", "feature", "mse", "kl", "rkd", "ekd")]
    assert [row.split("|")[2].strip() for row in distilled] == ["-", *["features (.npy)"] * 2, "checkpoint",
                                                                  *["features (.npy)"] * 2]
    assert all(re.search(r"\| \d\.\d{3} \+- \d\.\d{3} \| \d\.\d{3} \|", row) for row in distilled)
    assert (pages / "docs" / "distillation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_block_is_replaced_between_its_markers_only():
    text = "a\n<!-- begin generated: sweep -->\nold\nlines\n<!-- end generated: sweep -->\nb\n"
    assert replace_block(text, "sweep", "new\n") == "a\n<!-- begin generated: sweep -->\nnew\n<!-- end generated: sweep -->\nb\n"
    assert block_text(text, "sweep") == "old\nlines\n" and block_text(text, "finetune") is None


def test_quick_figures_never_go_into_the_repository_pages(capsys):
    assert make_docs().main(["--quick", "--only", "sweep"]) == 2
    assert "--quick would write a tiny run's figures into the repository's pages" in capsys.readouterr().err


def test_a_block_no_page_holds_is_refused(tmp_path):
    pages = copy_pages(tmp_path)
    with pytest.raises(FacetrainError, match="no page .* holds the generated block.* nope"):
        write_blocks(pages, {"sweep": "x", "nope": "y"})


def _run(label: str, accuracy: float, std: float = 0.02) -> Run:
    return Run(label, {"step": 300, "val": {"synthetic_val": {"accuracy": accuracy, "std": std}}, "best": {}},
               {"synthetic_val": [(0, 0.75), (300, accuracy)]}, {"train/throughput": [(10, 30.0), (20, 40.0), (30, 45.0)]})


def _distillation(finals: dict[str, list[float]]) -> distill.Distillation:
    students = {loss: distill.Student(loss, [_run(loss, value) for value in values]) for loss, values in finals.items()}
    return distill.Distillation(_run("teacher", 0.95), ("backbone=r18", "name=distill_teacher"),
                                ("backbone=mbf", "distill=none", "seed=0"), students,
                                list(range(len(finals["none"]))), 300, 1000, 200, 30, 32)


def test_the_distillation_table_gives_each_loss_its_change_over_no_teacher_seed_by_seed(tmp_path):
    finals = {"none": [0.80, 0.84, 0.82], "feature": [0.83, 0.86, 0.85], "mse": [0.79, 0.85, 0.80],
              "kl": [0.80, 0.84, 0.82], "rkd": [0.81, 0.86, 0.83], "ekd": [0.84, 0.82, 0.82]}
    text = distill.block(_distillation(finals), "Measured on X")
    rows = {row.split("|")[1].strip(): [cell.strip() for cell in row.split("|")[2:-1]] for row in table_rows(text)}
    assert rows["`distill=none`"] == ["-", "0.820 +- 0.020", "0.800 / 0.840 / 0.820", "", "", "40"]
    assert rows["`distill=feature`"] == ["features (.npy)", "0.847 +- 0.015", "0.830 / 0.860 / 0.850", "+2.7 +- 0.6",
                                         "yes", "40"]
    assert rows["`distill=mse`"][3:5] == ["-0.7 +- 1.5", "no"] and rows["`distill=rkd`"][3:5] == ["+1.3 +- 0.6", "yes"]
    assert rows["`distill=ekd`"][3:5] == ["+0.7 +- 3.1", "no"] and rows["`distill=kl`"][0] == "checkpoint"
    flat = text.replace("\n", " ")
    assert "`distill=feature`'s (+2.7 +- 0.6 points, more than twice its standard error from 0)" in flat
    assert "standard deviation over the seeds" in flat and "(32 images of 200 identities" in flat
    assert "`backbone=r18`" in flat and "`backbone=mbf`" in flat and "seed=0" not in flat  # where and what varies: left out
    distill.picture(_distillation(finals), tmp_path / "distillation.png")
    assert (tmp_path / "distillation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_seed_shows_the_folds_spread_and_says_when_no_loss_helped():
    finals = {loss: [0.80] for loss in ("none", "feature", "mse", "kl", "rkd", "ekd")}
    text = distill.block(_distillation(finals), "Measured on X").replace("\n", " ")
    assert "0.800 +- 0.020" in text and "over the 10 folds" in text and "| +0.0 | - |" in text  # one seed: not judged
    assert "No loss raised the mean accuracy over `distill=none`" in text
