"""Embedding extraction for evaluation: image + horizontal flip, combined as the field does."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from facetrain.data.transforms import normalize

FlipMode = Literal["sum", "concat", "none"]


@torch.inference_mode()
def embed_images(
    backbone: nn.Module,
    images: np.ndarray,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    flip: FlipMode = "sum",
    channels_last: bool = False,
) -> np.ndarray:
    """Embeddings of uint8 RGB ``images [N,H,W,3]`` as float32 ``[N, d]`` (``[N, 2d]`` for concat).

    Identical images (pairs often repeat one) are embedded once.
    """
    unique, inverse = _deduplicate(images)
    was_training = backbone.training
    backbone.eval()
    outputs = []
    for start in range(0, len(unique), batch_size):
        batch = torch.from_numpy(unique[start : start + batch_size]).to(device).permute(0, 3, 1, 2)
        batch = normalize(batch)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        emb = backbone(batch).float()
        if flip != "none":
            emb_flip = backbone(batch.flip(3)).float()
            emb = emb + emb_flip if flip == "sum" else torch.cat([emb, emb_flip], dim=1)
        outputs.append(emb.cpu())
    backbone.train(was_training)
    return torch.cat(outputs).numpy()[inverse]


def _deduplicate(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique_images, inverse)`` with ``unique_images[inverse] == images``, by exact bytes."""
    ids: dict[bytes, int] = {}
    inverse = np.array([ids.setdefault(image.tobytes(), len(ids)) for image in images], dtype=np.int64)
    _, first_index = np.unique(inverse, return_index=True)
    return images[first_index], inverse
