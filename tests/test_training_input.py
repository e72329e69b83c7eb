"""What training refuses before it starts, in one line: data of fewer than two identities (a classifier of one
class reaches loss 0 without learning), a dataset.root that is not the synthetic data's own folder, and
settings a preset gives a dataset other than the one chosen."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from facetrain.cli import compose_train_config
from facetrain.config.checks import check_config
from facetrain.data import build_train_data
from facetrain.data.images import encode_jpeg
from facetrain.data.recordio import write_insightface_folder
from facetrain.data.synthetic import SyntheticSpec, check_root
from facetrain.errors import ConfigError, DataError
from tests.data_helpers import face, write_image_folder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = SyntheticSpec(num_classes=20, images_per_class=8, val_identities=10, val_images_per_identity=4, val_pairs=20, seed=0)


def one_identity_folder(tmp_path: Path) -> dict:
    write_image_folder(tmp_path / "faces", [3])
    return {"name": "imagefolder", "root": str(tmp_path / "faces")}


def one_label_list(tmp_path: Path) -> dict:
    write_image_folder(tmp_path / "faces", [2, 2])
    (tmp_path / "list.txt").write_text("faces/id_000/0.jpg 3\nfaces/id_000/1.jpg 3\nfaces/id_001/0.jpg 3\n")
    return {"name": "imagefolder", "root": str(tmp_path / "list.txt")}


def one_class_rec(tmp_path: Path) -> dict:
    write_insightface_folder(tmp_path / "rec", [(0, encode_jpeg(face(1))), (0, encode_jpeg(face(2)))], num_classes=1)
    return {"name": "rec", "root": str(tmp_path / "rec")}


@pytest.mark.parametrize("make", [one_identity_folder, one_label_list, one_class_rec])
def test_training_data_of_one_identity_is_refused(tmp_path, make):
    with pytest.raises(DataError, match=r"holds 1 identity: training needs at least two \(with one, the loss falls to 0"):
        build_train_data(**make(tmp_path), num_classes=None)


def test_one_synthetic_class_is_refused_by_the_config_and_the_builder():
    cfg = compose_train_config(["experiment=smoke", "dataset.num_classes=1"], CONFIGS)
    with pytest.raises(ConfigError, match=r"dataset.num_classes=1 is out of range \(an integer >= 2, or null\)"):
        check_config(cfg)
    with pytest.raises(DataError, match="dataset=synthetic holds 1 identity"):
        build_train_data("synthetic", root=None, num_classes=1, images_per_class=2, val_identities=2,
                         val_images_per_identity=2, val_pairs=20, seed=0)


def test_a_synthetic_root_must_be_new_empty_or_the_same_dataset(tmp_path):
    check_root(SMALL, None)  # the cache folder
    check_root(SMALL, str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    check_root(SMALL, str(tmp_path / "empty"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_pairs.bin").write_bytes(b"pairs")
    with pytest.raises(ConfigError, match=r"dataset.root=.*/mine already holds other files, but dataset=synthetic "
                                          r"generates its images into dataset.root; .*eval.targets=\[.*/mine/<name>.bin\]"):
        check_root(SMALL, str(tmp_path / "mine"))
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "spec.json").write_text(json.dumps({**SMALL.__dict__, "num_classes": 200}))
    with pytest.raises(ConfigError, match=r"holds synthetic data of other settings \(num_classes 200 there, 20 here\)"):
        check_root(SMALL, str(tmp_path / "generated"))
    (tmp_path / "generated" / "spec.json").write_text(json.dumps(SMALL.__dict__))
    check_root(SMALL, str(tmp_path / "generated"))


def test_the_smoke_preset_sizes_only_the_synthetic_data():
    synthetic = compose_train_config(["experiment=smoke"], CONFIGS).dataset
    assert (synthetic.num_classes, synthetic.images_per_class, synthetic.val_pairs) == (20, 8, 20)
    own = compose_train_config(["experiment=smoke", "dataset=imagefolder", "dataset.root=/data/faces"], CONFIGS)
    check_config(own)
    assert OmegaConf.to_container(own.dataset, resolve=True)["num_classes"] is None and "images_per_class" not in own.dataset
    assert own.trainer.max_steps == 6  # the rest of the preset still applies
    assert compose_train_config(["experiment=smoke", "dataset.num_classes=5"], CONFIGS).dataset.num_classes == 5
