"""The field's released weights in facetrain and back: read a file as data (:mod:`.files`), recognise its
layout from its keys (:mod:`.layouts`), convert it to our keys and RGB input (:mod:`.convert`).

``read_layout(path)`` says what a file is; ``load_into(found, backbone, ...)`` puts its weights into a
backbone built for it (``scripts/import_weights.py``, ``init.backbone=`` in training).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from facetrain.errors import ModelError
from facetrain.weights.convert import to_facetrain, to_official
from facetrain.weights.files import WeightFile, read_weight_file, write_safetensors
from facetrain.weights.layouts import Layout, detect, strip_prefix

log = logging.getLogger("facetrain")
CHANNEL_ORDERS = ("auto", "rgb", "bgr")

__all__ = ["FORMATS", "Found", "Layout", "export_layout", "load_into", "read_layout", "to_official", "write_safetensors"]


@dataclass
class Found:
    """A weight file and what it is."""

    file: WeightFile
    layout: Layout
    state: dict  # prefix-stripped tensors


def read_layout(path: str | Path) -> Found:
    """Read ``path`` and recognise its layout; a one-line ModelError when it is none facetrain knows."""
    file = read_weight_file(Path(path))
    if file.config is not None:  # a facetrain checkpoint or a facetrain safetensors export
        backbone = dict(file.config["backbone"])
        name = backbone.pop("name")
        layout = Layout("facetrain", name, f"a facetrain {name}", backbone, file.config["embedding_size"],
                        (file.channel_order or "RGB").upper())
        return Found(file, layout, file.state)
    state = strip_prefix(file.state)
    layout = detect(state)
    if layout is None:
        first = ", ".join(list(state)[:3])
        raise ModelError(f"{file.path} is no weight layout facetrain knows (its first keys: {first})",
                         "facetrain reads arcface_torch and AdaFace backbones, torchvision ImageNet files and its own "
                         "checkpoints; use backbone=timm backbone.weights=... for timm files")
    return Found(file, layout, state)


FORMATS = {"insightface": ("r", "mbf", "vit_"), "adaface": ("ir_",)}  # format -> the backbones it holds


def export_layout(fmt: str, name: str, hparams: dict[str, Any], embedding_size: int) -> Layout:
    """The layout a backbone ``name`` takes in another framework's format: ``insightface`` (arcface_torch's
    ``backbone.pth`` of r*, mbf, vit_*) or ``adaface`` (AdaFace's IR / IR-SE, BGR input)."""
    if not name.startswith(FORMATS[fmt]) or (fmt == "insightface" and name.startswith("ir_")):
        holds = {"insightface": "IResNet (r*), MobileFaceNet (mbf) and ViT (vit_*)", "adaface": "IR and IR-SE (ir_*)"}[fmt]
        raise ModelError(f"--format {fmt} holds {holds} backbones, not {name}", "use --format safetensors")
    source = "adaface" if fmt == "adaface" else "arcface_torch"
    return Layout(source, name, f"{source}'s {name}", dict(hparams), embedding_size, "BGR" if fmt == "adaface" else "RGB")


def check_fits(found: Found, backbone: str, hparams: dict[str, Any], embedding_size: int) -> None:
    """A one-line ModelError when ``found`` is not of the configured backbone, its settings and embedding size."""
    layout, path = found.layout, found.file.path
    if layout.backbone != backbone:
        raise ModelError(f"{path} holds {layout.description}, but backbone={backbone}", f"use backbone={layout.backbone}")
    for key, value in layout.hparams.items():
        if key in hparams and hparams[key] != value:
            raise ModelError(f"{path} holds {layout.description}, but backbone.{key}={hparams[key]}",
                             f"use backbone.{key}={value}")
    if layout.embedding_size is not None and layout.embedding_size != embedding_size:
        raise ModelError(f"{path} makes {layout.embedding_size}-d embeddings, but embedding_size={embedding_size}",
                         f"use embedding_size={layout.embedding_size}")


def load_into(found: Found, backbone: nn.Module, name: str, hparams: dict[str, Any], embedding_size: int,
              channel_order: str = "auto", strict: bool = True) -> list[str]:
    """Put the weights of ``found`` into ``backbone`` (the registered ``name`` built with ``hparams`` and
    ``embedding_size``), converted to our keys and RGB input; returns the keys of ``backbone`` the file does
    not provide (they keep their initial values). ``channel_order`` (``auto``: the layout's) says what input
    the file's model was trained on; ``strict`` refuses a file that leaves keys out."""
    if channel_order not in CHANNEL_ORDERS:
        raise ModelError(f"channel order '{channel_order}' is not one of {', '.join(CHANNEL_ORDERS)}",
                         "pass auto, rgb or bgr")
    check_fits(found, name, hparams, embedding_size)
    layout = found.layout
    if channel_order != "auto":
        layout = Layout(**{**layout.__dict__, "channel_order": channel_order.upper()})
    converted, left_out = to_facetrain(found.state, layout, backbone.state_dict(), str(found.file.path))
    if left_out and strict:
        raise ModelError(f"{found.file.path} ({layout.description}) leaves {len(left_out)} of the backbone's tensors "
                         f"new (e.g. {left_out[0]})", "allow it (init.strict=false / --non-strict) to start them fresh")
    backbone.load_state_dict(converted)
    if left_out:
        log.info(f"{found.file.path}: {len(left_out)} tensors start fresh ({', '.join(left_out[:4])}"
                 + (", ..." if len(left_out) > 4 else "") + ")")
    if layout.channel_order == "BGR":
        log.info(f"{found.file.path}: trained on BGR input; its first convolution was converted to take RGB")
    return left_out
