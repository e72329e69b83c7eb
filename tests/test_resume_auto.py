"""resume=auto continues the newest run of the same name and says which one and why; a preset's runs are named
after the preset, so the quick start's resume=auto never continues a smoke run."""
from __future__ import annotations

from pathlib import Path

from facetrain.runs.run_dir import auto_resume_note, resolve_run_dir
from tests.conftest import SMOKE

QUIET = ["eval.at_start=false", "eval.targets=[]"]
# the quick start's name (mbf_arcface_synthetic) on a small synthetic set
SMALL_DEFAULT = ["dataset.num_classes=20", "dataset.images_per_class=8", "dataset.val_identities=10",
                 "dataset.val_images_per_identity=6", "dataset.val_pairs=100", "trainer.batch_size=4",
                 "trainer.num_workers=0", "trainer.progress_bar=false", *QUIET]


def fake_run(root: Path, name: str, stamp: str, step: int | None) -> Path:
    run_dir = root / name / stamp
    (run_dir / "checkpoints").mkdir(parents=True)
    if step is not None:
        (run_dir / "checkpoints" / f"step_{step:09d}.pt").write_bytes(b"")
    return run_dir


def test_resume_auto_picks_the_newest_run_of_its_name_with_a_checkpoint(tmp_path):
    fake_run(tmp_path, "a", "2026-01-01_00-00-00_0000", 4)
    newest = fake_run(tmp_path, "a", "2026-01-02_00-00-00_0000", 2)
    fake_run(tmp_path, "a", "2026-01-03_00-00-00_0000", None)  # newer, but nothing to resume from
    fake_run(tmp_path, "b", "2026-01-04_00-00-00_0000", 9)  # newer, of another name
    assert resolve_run_dir(str(tmp_path), "a", "auto") == str(newest)
    assert auto_resume_note(str(tmp_path), "a", newest, 2) == (
        f"resume=auto: continuing {newest} at step 2 (the newest of 2 runs named 'a' with a checkpoint in "
        f"{tmp_path / 'a'}; pass resume=<run_dir> for another)")


def test_the_quick_start_never_continues_a_smoke_run_and_resume_auto_says_what_it_continues(train_in_process, tmp_path):
    outputs = tmp_path / "outputs"
    smoke_dir = train_in_process(*SMOKE, "trainer.max_steps=3", *QUIET)
    assert smoke_dir.parent == outputs / "smoke_mbf_arcface_synthetic"
    log = (smoke_dir / "train.log").read_text()

    quick_dir = train_in_process("resume=auto", "trainer.max_steps=1", *SMALL_DEFAULT)
    assert quick_dir.parent == outputs / "mbf_arcface_synthetic"
    assert "resume=auto: no earlier run of 'mbf_arcface_synthetic' with a checkpoint" in (quick_dir / "train.log").read_text()
    assert (smoke_dir / "train.log").read_text() == log  # the smoke run was left alone

    assert train_in_process(*SMOKE, "resume=auto", "trainer.max_steps=4", *QUIET) == smoke_dir
    note = (f"resume=auto: continuing {smoke_dir} at step 3 (the newest of 1 run named 'smoke_mbf_arcface_synthetic' "
            f"with a checkpoint in {outputs / 'smoke_mbf_arcface_synthetic'}; pass resume=<run_dir> for another)")
    assert note in (smoke_dir / "train.log").read_text()
