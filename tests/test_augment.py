"""Augmentation: configured in dataset.augment, random per sample yet a pure function of (seed, epoch, index)."""
from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from facetrain.config import register_schemas
from facetrain.data import RecordDataset, build_augment
from facetrain.data.images import encode_jpeg
from facetrain.data.recordio import write_insightface_folder
from facetrain.runs.run_dir import register_resolvers
from facetrain.train import hparams
from tests.data_helpers import face

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EVERY_EXTRA = dict(random_resized_crop=0.5, color_jitter=0.5, grayscale=0.3, blur=0.3, jpeg_compression=0.5, coarse_dropout=0.5)


def test_no_extras_means_no_transform():
    assert build_augment(seed=0) is None


def test_same_seed_epoch_index_same_image_else_different():
    augment = build_augment(seed=1, **EVERY_EXTRA)
    image = face(3)
    first = augment(image, epoch=2, index=7)
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, augment(image, epoch=2, index=7))
    assert np.array_equal(first, build_augment(seed=1, **EVERY_EXTRA)(image, 2, 7))  # a fresh worker agrees
    others = [augment(image, 3, 7), augment(image, 2, 8), build_augment(seed=2, **EVERY_EXTRA)(image, 2, 7)]
    assert all(not np.array_equal(first, other) for other in others)


def test_extras_draw_independently():
    """One random stream for the whole pipeline: extras with equal probabilities must not always co-occur."""
    augment = build_augment(seed=0, random_resized_crop=0.5, crop_scale=[0.4, 0.5], grayscale=0.5)
    image = face(5)
    gray_image = A.ToGray(p=1.0)(image=image)["image"]
    outcomes = set()
    for index in range(40):
        out = augment(image, 0, index)
        gray = bool(np.array_equal(out[..., 0], out[..., 1]))
        cropped = np.abs(out.astype(int) - (gray_image if gray else image)).mean() > 5
        outcomes.add((gray, bool(cropped)))
    assert outcomes == {(False, False), (False, True), (True, False), (True, True)}


def test_worker_batches_follow_set_epoch_and_match_a_single_process(tmp_path):
    write_insightface_folder(tmp_path, [(i // 4, encode_jpeg(face(i))) for i in range(8)], num_classes=2)
    dataset = RecordDataset(tmp_path, build_augment(seed=0, color_jitter=1.0, coarse_dropout=1.0))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)

    def epoch(number: int, loader: DataLoader) -> torch.Tensor:
        dataset.set_epoch(number)
        return torch.cat([images for images, _ in loader])

    in_workers = [epoch(0, loader), epoch(1, loader)]
    single = DataLoader(dataset, batch_size=4, num_workers=0)
    assert torch.equal(in_workers[1], epoch(1, single)) and torch.equal(in_workers[0], epoch(0, single))
    assert not torch.equal(in_workers[0], in_workers[1])


def test_config_keys_reach_the_pipeline():
    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["dataset=rec", "dataset.root=x", "seed=5",
                                                     "dataset.augment.color_jitter=0.3", "dataset.augment.blur=0.1"])
    settings = hparams(cfg.dataset)
    assert settings["max_bad_fraction"] == 0.001 and settings["augment"]["seed"] == 5
    augment = build_augment(**settings["augment"])
    assert repr(augment) == "Augment([ColorJitter, GaussianBlur], seed=5)"
