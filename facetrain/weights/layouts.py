"""The field's weight layouts, recognised from a state dict's keys: what a file is, which facetrain
backbone it fits, and the official key names of the layouts whose names differ from ours.

Known layouts (keys after a ``module.`` / ``model.`` prefix is stripped):

- ``arcface_torch`` IResNet (``conv1``, ``prelu``, ``layer1.0.bn1``, ``fc``, ``features``): our ``r*`` under a
  pure renaming (same tensors, same order); MobileFaceNet (``layers.*``, ``conv_sep``, ``features.layers``):
  our ``mbf`` with its blocks and width; ViT (``patch_embed``, ``blocks``, ``feature``): our ``vit_*``, same keys.
- ``adaface`` IR / IR-SE (``input_layer``, ``body``, ``output_layer``): our ``ir_*`` / ``ir_se_*``, same keys;
  AdaFace trained on BGR input.
- ``torchvision`` ImageNet ResNet-50, MobileNetV2, MobileNetV3-Large: our torchvision backbones' body
  (the classifier is dropped; the face embedding layer starts new).
- ``facetrain``: our own keys.

The official key lists are facts of insightface 7fadd420 (``recognition/arcface_torch/backbones``),
AdaFace c60eaa78 (``net.py``) and torchvision, recorded in ``tests/fixtures`` by running that code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from facetrain.backbones.iresnet import STAGE_DEPTHS

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
IR_DEPTHS = {8: 18, 16: 34, 24: 50, 49: 101, 50: 152, 66: 200}  # blocks in the body -> AdaFace's network
VIT_SIZES = {(256, 12): "vit_t", (512, 12): "vit_s", (512, 24): "vit_b", (768, 24): "vit_l"}  # (dim, depth)


@dataclass
class Layout:
    """What a state dict is: its ``source`` (arcface_torch, adaface, torchvision, facetrain), the facetrain
    ``backbone`` it fits with the ``hparams`` that backbone needs, its ``embedding_size`` (None: the face
    embedding layer is not in the file) and the ``channel_order`` it was trained on."""

    source: str
    backbone: str
    description: str
    hparams: dict[str, Any] = field(default_factory=dict)
    embedding_size: Optional[int] = None
    channel_order: str = "RGB"


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name in _BN]


def arcface_iresnet_keys(depths: tuple[int, ...]) -> list[str]:
    """arcface_torch's IResNet state-dict keys, in order, for stage depths ``depths``."""
    keys = ["conv1.weight", *_bn("bn1"), "prelu.weight"]
    for layer, depth in enumerate(depths, 1):
        for i in range(depth):
            block = f"layer{layer}.{i}"
            keys += [*_bn(f"{block}.bn1"), f"{block}.conv1.weight", *_bn(f"{block}.bn2"), f"{block}.prelu.weight",
                     f"{block}.conv2.weight", *_bn(f"{block}.bn3")]
            if i == 0:  # every stage starts with a stride-2 block
                keys += [f"{block}.downsample.0.weight", *_bn(f"{block}.downsample.1")]
    return keys + [*_bn("bn2"), "fc.weight", "fc.bias", *_bn("features")]


def _conv_block(prefix: str, activation: bool = True) -> list[str]:
    return [f"{prefix}.layers.0.weight", *_bn(f"{prefix}.layers.1")] + ([f"{prefix}.layers.2.weight"] if activation else [])


def _depthwise(prefix: str) -> list[str]:
    return _conv_block(f"{prefix}.layers.0") + _conv_block(f"{prefix}.layers.1") + _conv_block(f"{prefix}.layers.2", False)


def arcface_mbf_keys(blocks: tuple[int, ...]) -> list[str]:
    """arcface_torch's MobileFaceNet state-dict keys, in order, for ``blocks`` residual blocks per stage."""
    keys = _conv_block("layers.0")
    if blocks[0] == 1:
        keys += _conv_block("layers.1")
    else:
        keys += [key for j in range(blocks[0]) for key in _depthwise(f"layers.1.layers.{j}")]
    for index, count in zip((2, 4, 6), blocks[1:]):
        keys += _depthwise(f"layers.{index}")
        keys += [key for j in range(count) for key in _depthwise(f"layers.{index + 1}.layers.{j}")]
    return keys + _conv_block("conv_sep") + _conv_block("features.layers.0", False) + ["features.layers.2.weight",
                                                                                     *_bn("features.layers.3")]


def _count(keys: set[str], pattern: str) -> int:
    """How many distinct indices ``\\d+`` fill the one ``{}`` of ``pattern`` among ``keys``."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    return len({match.group(1) for key in keys if (match := regex.match(key))})


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without a ``module.`` (DataParallel/DDP) or ``model.`` (Lightning) prefix on its keys."""
    for prefix in ("module.", "model."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def detect(state: dict[str, torch.Tensor]) -> Optional[Layout]:
    """The layout of a prefix-stripped state dict, or None if it is none of the known ones."""
    keys = set(state)
    if {"conv1.weight", "prelu.weight", "layer1.0.bn1.weight", "features.running_mean"} <= keys:
        depths = tuple(_count(keys, f"layer{layer}.{{}}.bn1.weight") for layer in range(1, 5))
        name = next((name for name, value in STAGE_DEPTHS.items() if value == depths), None)
        return Layout("arcface_torch", name or "r?", f"arcface_torch IResNet with stage depths {depths}"
                      + (f" = {name}" if name else ""), {}, state["fc.weight"].shape[0])
    if {"conv_sep.layers.0.weight", "features.layers.2.weight"} <= keys:
        first = 1 if "layers.1.layers.0.weight" in keys else _count(keys, "layers.1.layers.{}.layers.0.layers.0.weight")
        blocks = [first] + [_count(keys, f"layers.{i}.layers.{{}}.layers.0.layers.0.weight") for i in (3, 5, 7)]
        scale = state["layers.0.layers.0.weight"].shape[0] // 64
        return Layout("arcface_torch", "mbf", f"arcface_torch MobileFaceNet with blocks {blocks}, width scale {scale}",
                      {"blocks": blocks, "scale": scale}, state["features.layers.2.weight"].shape[0])
    if {"patch_embed.proj.weight", "pos_embed", "feature.2.weight"} <= keys:
        dim, depth = state["pos_embed"].shape[2], _count(keys, "blocks.{}.norm1.weight")
        name = VIT_SIZES.get((dim, depth))
        return Layout("arcface_torch", name or "vit?", f"arcface_torch ViT with {depth} blocks of width {dim}"
                      + (f" = {name}" if name else ""), {"depth": depth, "embed_dim": dim},
                      state["feature.2.weight"].shape[0])
    if {"input_layer.0.weight", "output_layer.3.weight"} <= keys:
        blocks = _count(keys, "body.{}.res_layer.0.weight")
        depth = IR_DEPTHS.get(blocks)
        name = f"ir_{'se_' if any('se_block' in key for key in keys) else ''}{depth}" if depth else "ir?"
        return Layout("adaface", name, f"AdaFace IR network with {blocks} residual blocks"
                      + (f" = {name}" if depth else ""), {}, state["output_layer.3.weight"].shape[0], "BGR")
    if {"conv1.weight", "layer1.0.conv3.weight", "fc.weight"} <= keys:
        return Layout("torchvision", "resnet50", "torchvision ResNet-50 (ImageNet classifier)")
    if "features.0.0.weight" in keys and "classifier.3.weight" in keys:
        return Layout("torchvision", "mobilenet_v3_large", "torchvision MobileNetV3-Large (ImageNet classifier)")
    if "features.0.0.weight" in keys and "classifier.1.weight" in keys:
        return Layout("torchvision", "mobilenet_v2", "torchvision MobileNetV2 (ImageNet classifier)")
    return None


def official_keys(layout: Layout) -> Optional[list[str]]:
    """The official key names of ``layout`` in the order of our backbone's, where they differ from ours."""
    if layout.source != "arcface_torch" or layout.backbone.startswith("vit"):
        return None
    if layout.backbone == "mbf":
        return arcface_mbf_keys(tuple(layout.hparams["blocks"]))
    return arcface_iresnet_keys(STAGE_DEPTHS[layout.backbone])
