"""The field's released weights in facetrain and back: read a file as data (:mod:`.files`), recognise its
layout from its keys (:mod:`.layouts`), convert it to our keys and RGB input (:mod:`.convert`).

``read_layout(path)`` says what a file is; ``load_into(found, backbone, ...)`` puts its weights into a
backbone built for it (``init.backbone=`` in training), ``build_loaded(found, ...)`` builds that backbone once
the file is known to fit it (``scripts/import_weights.py``, :func:`facetrain.inference.load_backbone`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facetrain.backbones import build_backbone
from facetrain.errors import ModelError
from facetrain.plural import counted
from facetrain.weights.convert import to_facetrain, to_official
from facetrain.weights.files import WeightFile, read_weight_file, write_safetensors
from facetrain.weights.layouts import Layout, detect, strip_prefix
from facetrain.weights.network import DAMAGED, checked_config, meta_state_dict

log = logging.getLogger("facetrain")
CHANNEL_ORDERS = ("auto", "rgb", "bgr")

__all__ = ["FORMATS", "Found", "Layout", "build_loaded", "check_fitting", "export_layout", "load_into", "read_layout",
           "recognise", "to_official", "write_safetensors"]


@dataclass
class Found:
    """A weight file and what it is."""

    file: WeightFile
    layout: Layout
    state: dict  # prefix-stripped tensors


def read_layout(path: str | Path) -> Found:
    """Read ``path`` and recognise its layout; a one-line ModelError when it is none facetrain knows."""
    return recognise(read_weight_file(Path(path)))


def recognise(file: WeightFile) -> Found:
    """What ``file`` is: a facetrain file by its config (held to the command line's rules), others by their keys."""
    if file.config is not None:  # a facetrain checkpoint or a facetrain safetensors export
        name, hparams, size = checked_config(file.config, file.path)
        order = str(file.channel_order or "RGB").upper()
        if order not in ("RGB", "BGR"):
            raise ModelError(f"{file.path}: its input channel order is {file.channel_order!r}, not RGB or BGR", DAMAGED)
        return Found(file, Layout("facetrain", name, f"a facetrain {name}", hparams, size, order), file.state)
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


def _fitted(found: Found, target: dict[str, torch.Tensor], name: str, hparams: dict[str, Any], embedding_size: int,
            channel_order: str, strict: bool) -> tuple[dict[str, torch.Tensor], list[str], Layout]:
    """The weights of ``found`` in the keys of ``target`` (a state dict of backbone ``name``), the keys it leaves
    out, and the layout they were read as; a one-line ModelError when the file does not fit."""
    if channel_order not in CHANNEL_ORDERS:
        raise ModelError(f"channel order '{channel_order}' is not one of {', '.join(CHANNEL_ORDERS)}",
                         "pass auto, rgb or bgr")
    check_fits(found, name, hparams, embedding_size)
    layout = found.layout
    if channel_order != "auto":
        layout = Layout(**{**layout.__dict__, "channel_order": channel_order.upper()})
    try:
        converted, left_out = to_facetrain(found.state, layout, target, str(found.file.path))
    except ModelError as exc:
        if layout.source != "facetrain":
            raise
        # check_fits found the network its own config names: the file disagrees with itself
        raise ModelError(f"{exc.problem} (the {name} its config names)", DAMAGED) from None
    if left_out and strict:
        raise ModelError(f"{found.file.path} ({layout.description}) leaves {len(left_out)} of the backbone's tensors "
                         f"new (e.g. {left_out[0]})", "allow it (init.strict=false / --non-strict) to start them fresh")
    return converted, left_out, layout


def load_into(found: Found, backbone: nn.Module, name: str, hparams: dict[str, Any], embedding_size: int,
              channel_order: str = "auto", strict: bool = True) -> list[str]:
    """Put the weights of ``found`` into ``backbone`` (the registered ``name`` built with ``hparams`` and
    ``embedding_size``), converted to our keys and RGB input; returns the keys of ``backbone`` the file does
    not provide (they keep their initial values). ``channel_order`` (``auto``: the layout's) says what input
    the file's model was trained on; ``strict`` refuses a file that leaves keys out."""
    converted, left_out, layout = _fitted(found, backbone.state_dict(), name, hparams, embedding_size, channel_order,
                                          strict)
    backbone.load_state_dict(converted)
    if left_out:
        log.info(f"{found.file.path}: {counted(len(left_out), 'tensor')} start fresh ({', '.join(left_out[:4])}"
                 + (", ..." if len(left_out) > 4 else "") + ")")
    if layout.channel_order == "BGR":
        log.info(f"{found.file.path}: trained on BGR input; its first convolution was converted to take RGB")
    return left_out


def check_fitting(found: Found, name: str, hparams: dict[str, Any], embedding_size: int, channel_order: str = "auto",
                  strict: bool = True) -> None:
    """Refuse ``found`` in one line unless :func:`load_into` would take it into backbone ``name`` (with ``hparams``
    and ``embedding_size``): compared with that network built on the meta device (names and shapes, no memory)."""
    _fitted(found, meta_state_dict(name, hparams, embedding_size, found.file.path), name, hparams, embedding_size,
            channel_order, strict)


def build_loaded(found: Found, name: str, hparams: dict[str, Any], embedding_size: int, channel_order: str = "auto",
                 strict: bool = True) -> tuple[nn.Module, list[str]]:
    """Backbone ``name`` (with ``hparams`` and ``embedding_size``) holding the weights of ``found``, and the keys
    the file leaves out (see :func:`load_into`); a file that does not fit is refused (:func:`check_fitting`)
    before the network takes any memory."""
    check_fitting(found, name, hparams, embedding_size, channel_order, strict)
    backbone = build_backbone(name, embedding_size, **hparams)
    return backbone, load_into(found, backbone, name, hparams, embedding_size, channel_order, strict)
