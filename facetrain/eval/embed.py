"""Embedding extraction for evaluation: image + horizontal flip, combined as the field does.

``flip`` is ``sum`` (insightface: embedding of the image plus that of its mirror image, ``[N, d]``),
``concat`` (the two side by side, ``[N, 2d]``) or ``none`` (the image alone, ``[N, d]``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Literal, Optional, Sequence, Union, get_args

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facetrain.data.images import decode_image
from facetrain.data.transforms import normalize
from facetrain.errors import DataError
from facetrain.eval.image_files import ImageFiles, Prepare, load_images

FlipMode = Literal["sum", "concat", "none"]
FLIP_MODES: tuple[str, ...] = get_args(FlipMode)
Batch = Union[np.ndarray, torch.Tensor]


def _embed_batch(backbone: nn.Module, images: Batch, device: torch.device | str, flip: FlipMode = "sum",
                channels_last: bool = False) -> torch.Tensor:
    """float32 CPU embeddings of one batch of uint8 RGB ``images [B,H,W,3]`` (``backbone`` in eval mode)."""
    batch = torch.as_tensor(images).to(device, non_blocking=True).permute(0, 3, 1, 2)
    batch = normalize(batch)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    emb = backbone(batch).float()
    if flip != "none":
        emb_flip = backbone(batch.flip(3)).float()
        emb = emb + emb_flip if flip == "sum" else torch.cat([emb, emb_flip], dim=1)
    return emb.cpu()


@torch.inference_mode()
def embed_batches(backbone: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu",
                  flip: FlipMode = "sum", channels_last: bool = False, total: int | None = None,
                  progress: bool = False, desc: str = "embed") -> np.ndarray:
    """Embeddings of every image of ``batches`` (uint8 RGB ``[B,H,W,3]`` each), in order, as float32
    ``[N, d]`` (``[N, 2d]`` for concat); ``total`` images sizes the progress bar."""
    if flip not in FLIP_MODES:
        raise ValueError(f"flip={flip!r}; choose one of {', '.join(FLIP_MODES)}")
    was_training = backbone.training
    backbone.eval()
    outputs = []
    try:
        with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for images in batches:
                outputs.append(_embed_batch(backbone, images, device, flip, channels_last))
                bar.update(len(images))
    finally:
        backbone.train(was_training)
    return torch.cat(outputs).numpy() if outputs else np.empty((0, 0), np.float32)


def embed_images(
    backbone: nn.Module,
    images: np.ndarray,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    flip: FlipMode = "sum",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "embed",
) -> np.ndarray:
    """Embeddings of uint8 RGB ``images [N,H,W,3]`` as float32 ``[N, d]`` (``[N, 2d]`` for concat).

    Identical images (pairs often repeat one) are embedded once.
    """
    unique, inverse = _deduplicate(images)
    batches = (unique[start : start + batch_size] for start in range(0, len(unique), batch_size))
    return embed_batches(backbone, batches, device, flip, channels_last, len(unique), progress, desc)[inverse]


def embed_files(backbone: nn.Module, base: Path, names: Sequence[str], device: torch.device, batch_size: int = 256,
                workers: int = 0, flip: FlipMode = "sum", progress: bool = False, desc: str = "embed",
                prepare: Optional[Prepare] = None, fix: str = "restore the file or leave it out of the list",
                decode: Callable[[bytes, str], np.ndarray] = decode_image) -> np.ndarray:
    """Embeddings ``[N, d]`` of the files ``base/<name>`` read by ``decode`` (resized to 112x112 unless
    ``prepare`` makes the input); the first file that cannot be read or prepared stops it with a DataError
    naming the file and ``fix``."""
    dataset = ImageFiles(base, names, prepare, decode=decode)

    def batches() -> Iterable[torch.Tensor]:
        for images, _, errors in load_images(dataset, batch_size, workers, pin_memory=device.type == "cuda"):
            bad = next((error for error in errors if error), None)
            if bad is not None:
                raise DataError(bad, fix)
            yield images

    return embed_batches(backbone, batches(), device, flip, total=len(dataset), progress=progress, desc=desc)


def _deduplicate(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique_images, inverse)`` with ``unique_images[inverse] == images``, by exact bytes."""
    ids: dict[bytes, int] = {}
    inverse = np.array([ids.setdefault(image.tobytes(), len(ids)) for image in images], dtype=np.int64)
    _, first_index = np.unique(inverse, return_index=True)
    return images[first_index], inverse
