"""Starting a run from trained weights (``init.*``): the backbone from a file (released weights or a
facetrain checkpoint, read as data), the head's class centres from the mean embedding of each class.

Fine-tuning on a few images per identity is where a random head hurts most: its centres are as far from
the embeddings as chance puts them, so the first steps move the pretrained backbone to fit them. Starting
each centre at the L2-normalised mean of its class's normalised embeddings (one pass of the backbone over
the training set, without augmentation) puts the head where the backbone already is.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from facetrain.data.datasets import FaceDataset
from facetrain.data.transforms import normalize
from facetrain.parallel.groups import DistInfo
from facetrain.plural import counted
from facetrain.heads import Head
from facetrain.weights import load_into, read_layout

log = logging.getLogger("facetrain")


def load_backbone_weights(path: str, backbone: nn.Module, name: str, hparams: dict[str, Any], embedding_size: int,
                          input_order: str, strict: bool) -> None:
    """``init.backbone``: put the weights of ``path`` (any file :func:`facetrain.weights.read_layout` reads)
    into the run's ``backbone``."""
    found = read_layout(path)
    load_into(found, backbone, name, hparams, embedding_size, input_order, strict)
    log.info(f"init.backbone: {found.layout.description} from {found.file.path}")


@contextlib.contextmanager
def without_augmentation(dataset: Dataset) -> Iterator[None]:
    """``dataset`` yields its images as stored inside the block (a :class:`FaceDataset`'s CPU-side
    augmentation is switched off; other datasets are taken as they are)."""
    if not isinstance(dataset, FaceDataset):
        yield
        return
    transform, dataset.transform = dataset.transform, None
    try:
        yield
    finally:
        dataset.transform = transform


@torch.no_grad()
def class_mean_centres(backbone: nn.Module, dataset: Dataset, num_classes: int, dist_info: DistInfo,
                       device: torch.device, batch_size: int, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centres [num_classes, d], images per class)``: the L2-normalised mean of each class's normalised
    embeddings over the whole dataset, each rank embedding every ``world_size``-th image (eval mode, no flip,
    no augmentation). Classes without images get a zero row."""
    indices = range(dist_info.rank, len(dataset), dist_info.world_size)
    was_training = backbone.training
    backbone.eval()
    sums, counts = None, torch.zeros(num_classes, device=device)
    with without_augmentation(dataset):
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
        for images, labels in loader:
            embeddings = F.normalize(backbone(normalize(images.to(device))).float())
            if sums is None:
                sums = torch.zeros(num_classes, embeddings.shape[1], device=device)
            labels = labels.to(device)
            sums.index_add_(0, labels, embeddings)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
    backbone.train(was_training)
    assert sums is not None, "the dataset is empty"
    if dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return F.normalize(sums), counts


def init_head_from_class_means(head: Head, backbone: nn.Module, dataset: Dataset, dist_info: DistInfo,
                               device: torch.device, batch_size: int, num_workers: int) -> None:
    """``init.head=class_mean``: every centre of ``head`` (this rank's block when it is sharded) at its
    class's mean embedding; classes without images keep their random centres."""
    centres, counts = class_mean_centres(backbone, dataset, head.num_classes, dist_info, device, batch_size, num_workers)
    start, count = head.class_block()
    block, seen = centres[start:start + count], counts[start:start + count] > 0
    initial = head.weight.detach().view(count, -1, head.embedding_size)[:, 0]
    head.init_class_centres(torch.where(seen.unsqueeze(1), block, initial.to(block)))
    missing = int((counts == 0).sum())
    log.info(f"init.head=class_mean: {counted(head.num_classes - missing, 'class centre')} set to their images' mean "
             f"embedding" + (f"; {counted(missing, 'class', 'classes')} without images keep random centres" if missing else ""))


def freeze_batch_norm(module: nn.Module) -> int:
    """``finetune.freeze_batch_norm``: every batch norm layer of ``module`` normalises with its running
    statistics and leaves them as they are, whatever mode the module is put in (its affine weights still
    train). Returns how many layers were frozen."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.register_forward_pre_hook(lambda layer, args: setattr(layer, "training", False))
    return len(norms)


def matches(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether parameter ``name`` lies under one of ``prefixes`` (``backbone`` or ``backbone.stages.0``)."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)
