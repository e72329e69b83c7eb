"""trainer.sampler: ``balanced`` (P identities x K images per batch) and ``mixed`` (TFace's half random, half
P x K), resumable mid-epoch and dealt over ranks like the default ``random`` sampler."""
from __future__ import annotations

import collections
import dataclasses
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from facetrain.config.checks import check_config
from facetrain.data.balanced import IdentityBalancedSampler, build_sampler, dataset_labels
from facetrain.errors import ConfigError, DataError
from tests.conftest import SMOKE
from tests.test_configs import composed

# 30 identities of 1 .. 10 images (three of each size), shuffled over 165 samples
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(30), np.tile(np.arange(1, 11), 3)))


class Labelled(torch.utils.data.Dataset):
    """A dataset that knows its labels (as facetrain's datasets do: ``label_of``)."""

    def __init__(self, labels: np.ndarray) -> None:
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def label_of(self, index: int) -> int:
        return int(self._labels[index])


def rank_batches(kind: str, rank: int, world: int, batch_size: int = 8, k: int = 2, seed: int = 0, epoch: int = 0,
                 start_batch: int = 0, labels: np.ndarray = LABELS) -> list[list[int]]:
    sampler = build_sampler(kind, Labelled(labels), batch_size, rank, world, seed, 1, k)
    sampler.set_epoch(epoch, start_batch)
    indices = list(sampler)
    assert len(indices) == len(sampler)
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


@pytest.mark.parametrize(("batch_size", "k"), [(8, 2), (12, 4), (9, 3)])
def test_every_balanced_batch_holds_p_identities_of_k_images(batch_size, k):
    batches = rank_batches("balanced", 0, 1, batch_size, k)
    assert len(batches) == len(LABELS) // batch_size  # as many batches as the random sampler's epoch
    for batch in batches:
        labels = LABELS[batch]
        groups = [labels[i:i + k] for i in range(0, batch_size, k)]  # K images of one identity side by side
        assert all(len(set(group)) == 1 for group in groups)
        assert len({group[0] for group in groups}) == batch_size // k  # P distinct identities


def test_identities_with_fewer_than_k_images_repeat_theirs_evenly():
    """K = 4: an identity of 1 image gives it 4 times, of 3 images one of them twice; 4 or more: 4 distinct."""
    for batch in rank_batches("balanced", 0, 1, 8, 4, epoch=3):
        for i in range(0, 8, 4):
            group = batch[i:i + 4]
            n = int((LABELS == LABELS[group[0]]).sum())
            counts = collections.Counter(group).values()
            assert len(counts) == min(n, 4) and max(counts) - min(counts) <= 1


def test_an_identity_gives_new_images_each_round_until_all_are_used():
    """Identity rounds rotate each identity's shuffled images: over an epoch a 10-image identity shows all
    of them when it appears three times (3 x 4 >= 10)."""
    seen = collections.defaultdict(list)
    for batch in rank_batches("balanced", 0, 1, 8, 4):
        for i in range(0, 8, 4):
            seen[LABELS[batch[i]]].append(batch[i:i + 4])
    for identity, groups in seen.items():
        n = int((LABELS == identity).sum())
        images = [index for group in groups for index in group]
        assert len(set(images)) == min(n, len(images))


def test_mixed_batches_are_half_random_then_half_balanced():
    batches = rank_batches("mixed", 0, 1, 8, 2)
    random_parts = [index for batch in batches for index in batch[:4]]
    assert len(set(random_parts)) == len(random_parts)  # the random half: a shuffle, no image twice in an epoch
    for batch in batches:
        labels = LABELS[batch[4:]]
        assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]


@pytest.mark.parametrize("kind", ["random", "balanced", "mixed"])
def test_deterministic_for_a_seed_and_new_for_another_seed_or_epoch(kind):
    assert rank_batches(kind, 0, 1) == rank_batches(kind, 0, 1)
    assert rank_batches(kind, 0, 1) != rank_batches(kind, 0, 1, seed=1)
    assert rank_batches(kind, 0, 1) != rank_batches(kind, 0, 1, epoch=1)


@pytest.mark.parametrize("kind", ["random", "balanced", "mixed"])
def test_resuming_mid_epoch_gives_the_remaining_batches(kind):
    whole = rank_batches(kind, 1, 2, epoch=2)
    assert rank_batches(kind, 1, 2, epoch=2, start_batch=3) == whole[3:]


@pytest.mark.parametrize("kind", ["random", "balanced", "mixed"])
def test_ranks_take_disjoint_parts_of_each_global_batch_and_together_the_whole(kind):
    """Rank r's batch is the r-th part of the global batch. Every identity here has at least K images, so no image
    is in two ranks' balanced parts (the ranks' identities differ: each global batch draws 3 x P distinct ones), nor
    in two random parts (mixed: the same image may come once randomly and once by its identity, as in TFace)."""
    labels = np.repeat(np.arange(40), 4)
    sampler = build_sampler(kind, Labelled(labels), 4, 0, 3, 0, 1, 2)
    global_batches = sampler.epoch_batches(torch.Generator().manual_seed(0)).tolist()
    per_rank = [rank_batches(kind, r, 3, 4, 2, labels=labels) for r in range(3)]
    for step, whole in enumerate(global_batches):
        parts = [per_rank[r][step] for r in range(3)]
        assert sum(parts, []) == whole
        halves = [whole] if kind != "mixed" else [sum((p[:2] for p in parts), []), sum((p[2:] for p in parts), [])]
        assert all(len(set(half)) == len(half) for half in halves)
        if kind != "random":
            assert len({labels[part[-1]] for part in parts}) == 3  # each rank's last identity


def test_accumulation_keeps_whole_optimizer_steps_as_the_random_sampler():
    sampler = build_sampler("balanced", Labelled(LABELS), 8, 0, 2, 0, 3, 2)
    assert sampler.batches_per_epoch == len(LABELS) // 16 // 3 * 3 == 9


def test_too_few_identities_for_a_global_batch_is_one_line():
    with pytest.raises(DataError, match="needs 8 identities, but the dataset has 6"):
        IdentityBalancedSampler(np.repeat(np.arange(6), 10), 8, 0, 2, images_per_identity=2)


def test_labels_come_from_the_dataset_without_decoding():
    assert np.array_equal(dataset_labels(Labelled(LABELS)), LABELS)


@pytest.mark.parametrize(("kind", "batch_size", "k", "message"), [
    ("balanced", 10, 4, "trainer.batch_size is 10, not a multiple of 4"),
    ("mixed", 12, 4, "half of trainer.batch_size (rounded up) is 6, not a multiple of 4"),
])
def test_a_batch_that_does_not_split_into_identities_is_refused(kind, batch_size, k, message):
    cfg = composed(f"trainer.sampler={kind}", f"trainer.batch_size={batch_size}", f"trainer.images_per_identity={k}")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(cfg)
    cfg.trainer.batch_size = 2 * k * 2
    check_config(cfg)


@pytest.mark.slow
def test_a_balanced_run_resumes_bit_identically(run_cli, tmp_path):
    """train.py with trainer.sampler=mixed: 4 steps straight equal 2 steps, then a resume to 4 (mid-epoch)."""
    args = [*SMOKE, "trainer.sampler=mixed", "trainer.images_per_identity=2", "trainer.max_steps=4",
            "checkpoint.every_steps=2", "checkpoint.keep_last=0", "eval.at_start=false"]
    straight = run_cli(*args, f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    for name in ("step_000000004.pt", "step_000000004.pt.sha256", "best.pt", "best.pt.sha256"):
        (tmp_path / "resumed" / "checkpoints" / name).unlink(missing_ok=True)
    resumed = run_cli(*args, f"resume={tmp_path / 'resumed'}")
    assert resumed.returncode == 0 and "resuming at step 2" in resumed.stderr, resumed.stderr
    a, b = (torch.load(tmp_path / run / "checkpoints" / "step_000000004.pt", weights_only=False)
            for run in ("straight", "resumed"))
    for key in a["backbone"]:
        assert torch.equal(a["backbone"][key], b["backbone"][key]), key
    assert OmegaConf.create(a["config"]).trainer.sampler == "mixed"


def test_the_trainer_draws_its_batches_with_trainer_sampler(tmp_path):
    """12 images per step on 6 identities: with sampler=balanced, 3 identities x 4 images per batch."""
    from facetrain.engine.trainer import Trainer
    from tests.trainer_helpers import make_trainer

    made = make_trainer(tmp_path, sharded=False)
    assert not isinstance(made.sampler, IdentityBalancedSampler)
    trainer = Trainer(made.model, made.optimizer, made.scheduler, made.dataset,
                      dataclasses.replace(made.s, sampler="balanced"), made.dist)
    assert isinstance(trainer.sampler, IdentityBalancedSampler)
    for images, labels, indices in trainer.loader:
        assert [len(set(labels[i:i + 4].tolist())) for i in (0, 4, 8)] == [1, 1, 1]
        assert len(set(labels.tolist())) == 3


def test_a_recordio_datasets_labels_come_from_one_pass_over_its_headers(tmp_path):
    """Whole records, label vectors (flag > 0: the first float after the header), records split at a 4-aligned
    magic and keys that are not positions: the one-pass labels equal label_of's, record by record."""
    from facetrain.data.datasets import RecordDataset
    from tests.data_helpers import face, irheader, jpeg_with_aligned_magic, write_rec_by_hand
    from facetrain.data.images import encode_jpeg

    records = [irheader(3.0) + encode_jpeg(face(0)), irheader([5.0, 1.0]) + encode_jpeg(face(1)),
               irheader(7.0) + jpeg_with_aligned_magic(face(2), 24), irheader([2.0]) + jpeg_with_aligned_magic(face(3), 28),
               irheader(0.0) + encode_jpeg(face(4))]
    write_rec_by_hand(tmp_path, records, keys=[0, 5, 9, 12, 40])
    (tmp_path / "property").write_text("8,112,112")
    dataset = RecordDataset(tmp_path)
    assert dataset.labels.tolist() == [dataset.label_of(i) for i in range(5)] == [3, 5, 7, 2, 0]
    assert dataset.reader.read_classes(np.array([40, 9, 0])).tolist() == [0, 7, 3]
    assert np.array_equal(dataset_labels(dataset), [3, 5, 7, 2, 0])
