"""CPU-side augmentation (albumentations) whose randomness is a pure function of (seed, epoch, index).

The horizontal flip and the normalisation to ``(x/255 - 0.5) / 0.5`` happen on the device
(``trainer.hflip``, :mod:`facetrain.data.transforms`); this module adds the field's optional extras
before the uint8 batch leaves the worker. Every extra is off (probability 0) by default, and
albumentations (about a second to import) is imported only when one is on.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Optional, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    import albumentations as A


class SampleTransform(Protocol):
    """What a dataset's ``transform`` is called with: the decoded RGB uint8 ``[H,W,3]`` image, the
    epoch and the sample's index; it returns an image of the same shape and dtype."""

    def __call__(self, image: np.ndarray, epoch: int, index: int) -> np.ndarray: ...


_MASK64 = (1 << 64) - 1
_PCG_INC = 0xDA3E39CB94B95BDB  # any odd number: the increment of the PCG64 stream


def mix64(*values: int) -> int:
    """A well-spread 64-bit key of integers (splitmix64 rounds): the same in every process and Python."""
    key = 0
    for value in values:
        key = ((key ^ value) + 0x9E3779B97F4A7C15) & _MASK64
        key = ((key ^ (key >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        key = ((key ^ (key >> 27)) * 0x94D049BB133111EB) & _MASK64
        key ^= key >> 31
    return key


class Augment:
    """An albumentations pipeline reseeded per sample from ``(seed, epoch, index)``, so a resumed run
    (or any worker that happens to load the sample) draws exactly the same augmentation."""

    def __init__(self, transforms: Sequence[A.BasicTransform], seed: int = 0) -> None:
        import albumentations as A

        self.pipeline = A.Compose(list(transforms))
        self.seed = seed
        # one pair of generators shared by all transforms (per-transform seeds would make their
        # draws coincide), reseeded in place per sample: ten times cheaper than new generators
        self._numpy = np.random.Generator(np.random.PCG64())
        self._python = random.Random()
        self.pipeline.set_random_state(self._numpy, self._python)

    def __call__(self, image: np.ndarray, epoch: int, index: int) -> np.ndarray:
        key = mix64(self.seed, epoch, index)
        self._numpy.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": key, "inc": _PCG_INC},
                                           "has_uint32": 0, "uinteger": 0}
        self._python.seed(key)
        return self.pipeline(image=image)["image"]

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.pipeline.transforms)
        return f"Augment([{names}], seed={self.seed})"


def build_augment(
    seed: int = 0,
    image_size: int = 112,
    random_resized_crop: float = 0.0,
    crop_scale: Sequence[float] = (0.8, 1.0),
    color_jitter: float = 0.0,
    jitter_strength: float = 0.2,
    grayscale: float = 0.0,
    blur: float = 0.0,
    jpeg_compression: float = 0.0,
    jpeg_quality: Sequence[int] = (40, 95),
    coarse_dropout: float = 0.0,
    dropout_size: Sequence[float] = (0.1, 0.3),
) -> Optional[Augment]:
    """The extras of ``dataset.augment``, each applied with its probability; None when all are off."""
    strength = jitter_strength
    candidates = [
        (random_resized_crop, lambda p: A.RandomResizedCrop((image_size, image_size), scale=tuple(crop_scale), p=p)),
        (color_jitter, lambda p: A.ColorJitter(strength, strength, strength, hue=min(strength / 4, 0.5), p=p)),
        (grayscale, lambda p: A.ToGray(p=p)),
        (blur, lambda p: A.GaussianBlur(blur_limit=(3, 7), p=p)),
        (jpeg_compression, lambda p: A.ImageCompression(quality_range=tuple(jpeg_quality), p=p)),
        (coarse_dropout, lambda p: A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=tuple(dropout_size),
                                                   hole_width_range=tuple(dropout_size), fill="random_uniform", p=p)),
    ]
    chosen = [(p, make) for p, make in candidates if p > 0]
    if not chosen:
        return None
    import albumentations as A  # the builders above use it when called

    return Augment([make(p) for p, make in chosen], seed)
