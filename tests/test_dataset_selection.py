"""dataset.include / dataset.exclude: the readers train on the samples a list of indices keeps (RecordIO,
image folders, synthetic), identities left without images are renumbered away, bad lists stop in one line,
and a run on a list resumes bit for bit."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facetrain.cli import compose_train_config
from facetrain.data import build_train_data
from facetrain.data.selection import write_index_list
from facetrain.errors import DataError
from tests.conftest import SMOKE
from tests.data_helpers import write_image_folder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _data(*overrides: str):
    return build_train_data(**dict(compose_train_config([*SMOKE, *overrides], CONFIGS).dataset))


def _lines(path: Path, indices) -> Path:
    path.write_text("".join(f"{i}\n" for i in indices))
    return path


def test_exclude_leaves_the_listed_samples_out_in_order(tmp_path):
    full = _data().dataset  # smoke: 20 identities x 8 images
    data = _data(f"dataset.exclude={_lines(tmp_path / 'exclude.txt', [0, 5, 159])}")
    assert len(data.dataset) == 157 and data.num_classes == 20
    kept = [i for i in range(160) if i not in (0, 5, 159)]
    for position in (0, 3, 156):
        image, label = data.dataset[position]
        expected_image, expected_label = full[kept[position]]
        assert torch.equal(image, expected_image) and label == expected_label
    assert data.dataset.where(0) == full.where(1)


def test_an_identity_that_loses_every_image_is_renumbered_away(tmp_path):
    """Identity 1 (samples 8..15) excluded whole: no dead class centre, the others keep their order."""
    data = _data(f"dataset.exclude={_lines(tmp_path / 'exclude.txt', range(8, 16))}")
    assert data.num_classes == 19 and len(data.dataset) == 152
    labels = [data.dataset.label_of(i) for i in range(len(data.dataset))]
    assert labels[:8] == [0] * 8 and labels[8:16] == [1] * 8 and labels[-1] == 18
    assert data.dataset[8][1] == 1  # what the loader yields, not only label_of


def test_include_and_exclude_combine_on_an_image_folder(tmp_path):
    write_image_folder(tmp_path / "faces", [3, 3, 3])
    include = _lines(tmp_path / "include.txt", [0, 1, 3, 4, 6, 7, 8])
    exclude = _lines(tmp_path / "exclude.txt", [1, 8])
    data = _data("dataset=imagefolder", f"dataset.root={tmp_path / 'faces'}", f"dataset.include={include}",
                 f"dataset.exclude={exclude}")
    assert [Path(data.dataset.where(i)).relative_to(tmp_path / "faces").as_posix() for i in range(len(data.dataset))] \
        == ["id_000/0.jpg", "id_001/0.jpg", "id_001/1.jpg", "id_002/0.jpg", "id_002/1.jpg"]
    assert [data.dataset[i][1] for i in range(5)] == [0, 1, 1, 2, 2]


def test_a_list_written_by_the_cleaner_round_trips(tmp_path):
    path = tmp_path / "include.txt"
    write_index_list(path, np.array([7, 2, 30]), 160, "/somewhere")
    assert path.read_text().startswith("# facetrain sample list: 160 samples of /somewhere\n")
    assert len(_data(f"dataset.include={path}").dataset) == 3


@pytest.mark.parametrize("content, problem", [
    ("3\n160\n", "exclude.txt:2: index 160 is out of range for a dataset of 160 samples"),
    ("3\nfour\n", "exclude.txt:2: 'four' is not a sample index"),
    ("# facetrain sample list: 99 samples of /x\n3\n", "was written for a dataset of 99 samples, this one has 160"),
])
def test_a_bad_list_is_one_line_naming_the_line(tmp_path, content, problem):
    (tmp_path / "exclude.txt").write_text(content)
    with pytest.raises(DataError) as error:
        _data(f"dataset.exclude={tmp_path / 'exclude.txt'}")
    assert problem in str(error.value) and "\n" not in str(error.value)


def test_a_list_that_keeps_nothing_or_one_identity_is_refused(tmp_path):
    with pytest.raises(DataError, match="leave none of the 160 samples"):
        _data(f"dataset.exclude={_lines(tmp_path / 'all.txt', range(160))}")
    with pytest.raises(DataError, match="holds 1 identity"):
        _data(f"dataset.include={_lines(tmp_path / 'one.txt', range(8))}")


def test_an_out_of_range_index_stops_the_cli_with_exit_2(run_cli, tmp_path):
    result = run_cli(*SMOKE, f"dataset.exclude={_lines(tmp_path / 'exclude.txt', [400])}")
    assert result.returncode == 2
    assert "index 400 is out of range for a dataset of 160 samples" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_on_an_exclude_list_is_bit_identical(run_cli, tmp_path):
    """The sampler shuffles the 145 kept samples; a copy of the run stopped mid-epoch (its step-7 checkpoint) and
    resumed ends where the run did (a schedule that does not depend on max_steps, as in test_training's
    test_resume_is_bit_identical)."""
    exclude = _lines(tmp_path / "exclude.txt", [*range(8, 16), 3, 40, 41, 99, 150, 151, 152])
    args = [*SMOKE, f"dataset.exclude={exclude}", "scheduler=multistep", "scheduler.milestones=[0.5,1.5]",
            "eval.at_start=false", "checkpoint.every_steps=7", "checkpoint.keep_last=2", "trainer.max_steps=14"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_cli(*args, f"hydra.run.dir={straight}").returncode == 0
    shutil.copytree(straight, interrupted)
    for name in ("step_000000014.pt", "step_000000014.pt.sha256", "best.pt"):
        (interrupted / "checkpoints" / name).unlink(missing_ok=True)
    resumed = run_cli(*args, f"resume={interrupted}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 7" in resumed.stderr
    assert "keep 145 of 160 images; 1 identities lost every image" in resumed.stderr
    a = torch.load(interrupted / "checkpoints" / "step_000000014.pt", weights_only=False)
    b = torch.load(straight / "checkpoints" / "step_000000014.pt", weights_only=False)
    assert a["head"]["weight"].shape[0] == 19 and a["data"] == {"images": 145, "classes": 19}
    for part in ("backbone", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
