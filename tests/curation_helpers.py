"""Identities a fixed pooling backbone tells apart, with noise of each kind injected where the test knows it.

Each identity is a colour code (an 8x8 grid of random colours, 192 numbers); each of its images is the code
jittered (per block and per pixel), stored as JPEG. :class:`PooledCode` (an 8x8 average pool of the normalised
image) reads the code back, so images of one identity have cosine ~0.95 and of two identities ~0 +- 0.07: a
stand-in for a trained face model whose embeddings separate the identities, at no training cost."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facetrain.curation.model import CleaningModel
from facetrain.data.images import encode_jpeg
from facetrain.data.recordio import write_insightface_folder
from facetrain.data.verification_bin import save_verification_bin

GRID = 8


class PooledCode(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, GRID).flatten(1)


def pooled_model() -> CleaningModel:
    return CleaningModel(Path("pooled-code"), "0" * 64, PooledCode().eval(), None)


def identity_code(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, size=(GRID, GRID, 3))


def code_image(code: np.ndarray, rng: np.random.Generator) -> bytes:
    blocks = code + rng.normal(0, 12, size=code.shape)
    image = np.kron(blocks, np.ones((112 // GRID, 112 // GRID, 1))) + rng.normal(0, 8, size=(112, 112, 3))
    return encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=95)


@dataclass
class NoisySet:
    """Where the noise was put: sample indices (``moved``, ``duplicate_within``, ``duplicate_across``), identity
    pairs made of one person (``one_person``) and identities copied from the evaluation set (``from_evaluation``)."""

    root: Path
    bin_path: Path
    labels: list[int] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)
    duplicate_within: list[int] = field(default_factory=list)
    duplicate_across: list[int] = field(default_factory=list)
    one_person: list[tuple[int, int]] = field(default_factory=list)
    from_evaluation: list[int] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)  # each identity's colour code


def write_noisy_set(folder: Path, identities: int = 30, per_identity: int = 10, seed: int = 0) -> NoisySet:
    """A RecordIO folder of ``identities`` identities with noise of each kind, and ``eval.bin`` of 10 other
    identities (3 of which also appear, as new images, among the training identities)."""
    rng = np.random.default_rng(seed)
    codes = [identity_code(rng) for _ in range(identities)]
    evaluation = [identity_code(rng) for _ in range(10)]
    codes[5] = codes[4]  # identities 4 and 5 (and 21 and 22) are one person
    codes[22] = codes[21]
    for identity, source in ((10, 0), (17, 1), (26, 2)):  # copied from the evaluation set's people
        codes[identity] = evaluation[source]
    images = {k: [code_image(codes[k], rng) for _ in range(per_identity)] for k in range(identities)}
    truth = NoisySet(folder / "rec", folder / "eval.bin", one_person=[(4, 5), (21, 22)], from_evaluation=[10, 17, 26],
                     codes=codes)
    for target, source in ((1, 2), (3, 8), (7, 9), (12, 15), (14, 19), (20, 24), (25, 28)):  # moved images
        images[target][-1] = code_image(codes[source], rng)
    within = {11: 0, 13: 2, 16: 4}  # identity: the image copied inside it
    for identity, image in within.items():
        images[identity].append(images[identity][image])
    across = {18: (6, 0), 23: (27, 3)}  # identity: (the identity whose image it holds, which image)
    for identity, (owner, image) in across.items():
        images[identity].append(images[owner][image])
    index = 0
    labelled = []
    for identity in range(identities):
        for j, data in enumerate(images[identity]):
            truth.labels.append(identity)
            if j == per_identity - 1 and identity in (1, 3, 7, 12, 14, 20, 25):
                truth.moved.append(index)
            if j == per_identity and identity in within:
                truth.duplicate_within.append(index)
            if j == per_identity and identity in across:
                truth.duplicate_across.append(index)
            labelled.append((identity, data))
            index += 1
    write_insightface_folder(truth.root, labelled, identities)
    pairs = [code_image(evaluation[k // 4], rng) for k in range(40)]
    save_verification_bin(truth.bin_path, pairs, [True, False] * 10)
    return truth


def write_gallery(folder: Path, people: dict[str, np.ndarray], per_identity: int = 3, seed: int = 1) -> Path:
    """A gallery as identify.py reads one: ``folder/<name>/<k>.jpg``, new images of each person's colour code."""
    rng = np.random.default_rng(seed)
    for name, code in people.items():
        (folder / name).mkdir(parents=True)
        for k in range(per_identity):
            (folder / name / f"{k}.jpg").write_bytes(code_image(code, rng))
    return folder


def precision_recall(found: set, truth: set) -> tuple[float, float]:
    hits = len(found & truth)
    return (hits / len(found) if found else 1.0), (hits / len(truth) if truth else 1.0)
