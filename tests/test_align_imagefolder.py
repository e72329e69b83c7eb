"""dataset=imagefolder on raw photos stops in one line naming scripts/align.py (image headers only, no
decoding), unless dataset.resize_unaligned=true; aligned crops (112, 224 squares, scripts/align.py's output)
pass."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetrain.cli import compose_train_config
from facetrain.data import ImageFolderDataset, build_train_data
from facetrain.errors import DataError
from tests.align_helpers import PHOTOS
from tests.eval_helpers import load_script

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def raw_people(tmp_path) -> Path:
    for identity, names in {"a": ["obama.jpg", "obama_and_biden.jpg"], "b": ["biden.jpg", "two_people.jpg"]}.items():
        (tmp_path / "raw" / identity).mkdir(parents=True)
        for name in names:
            shutil.copy(PHOTOS / name, tmp_path / "raw" / identity / name)
    return tmp_path / "raw"


def dataset_config(root: Path, *overrides: str) -> dict:
    cfg = compose_train_config(["experiment=smoke", "dataset=imagefolder", f"dataset.root={root}", *overrides], CONFIGS)
    return dict(cfg.dataset)


def test_raw_photos_stop_in_one_line_naming_scripts_align(raw_people):
    with pytest.raises(DataError) as error:
        build_train_data(**dataset_config(raw_people))
    message = str(error.value)
    assert "4 of 4 sampled images under" in message  # biden.jpg is a square, but 800x800 and "are not aligned face crops" in message
    assert f"python scripts/align.py {raw_people} <aligned folder>" in message and "dataset.resize_unaligned=true" in message
    assert "\n" not in message


def test_resize_unaligned_trains_on_them_squashed(raw_people):
    data = build_train_data(**dataset_config(raw_people, "dataset.resize_unaligned=true"))
    image, _ = data.dataset[0]
    assert data.num_classes == 2 and tuple(image.shape) == (3, 112, 112)


def test_aligned_crops_pass(raw_people, tmp_path):
    assert load_script("align").main([str(raw_people), str(tmp_path / "aligned"), "--workers", "1", "--no-progress"]) == 0
    assert build_train_data(**dataset_config(tmp_path / "aligned")).num_classes == 2
    for identity in ("x", "y"):  # insightface's 224 crops pass too (resized to 112 by the dataset)
        (tmp_path / "big" / identity).mkdir(parents=True)
        Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(tmp_path / "big" / identity / "0.png")
    assert len(ImageFolderDataset(tmp_path / "big")) == 2


def test_the_check_reads_headers_not_pixels(raw_people, monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    from facetrain.data.aligned import require_aligned
    from facetrain.data.imagefolder import list_images

    images = list_images(raw_people)
    with pytest.raises(DataError, match="not aligned face crops"):
        require_aligned(images.base, images.paths)
