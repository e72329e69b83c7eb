"""The network a weight file names, checked before any of it is built.

A facetrain checkpoint or safetensors export says which backbone it holds (``config.backbone`` with its
``name``, ``config.embedding_size``). Those values come from the file, so they are held to the command line's
rules (the schema types of :mod:`facetrain.config`, the ranges of :mod:`facetrain.config.checks`), and the
network is first built on the ``meta`` device (shapes only, no memory) to compare with the file's tensors: a
file of a few hundred bytes cannot make facetrain allocate a large model.
"""
from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facetrain.backbones import BACKBONES, build_backbone
from facetrain.config import SCHEMAS, TrainConfig
from facetrain.config.checks import rules
from facetrain.errors import ConfigError, ModelError

DAMAGED = "the file is damaged or was edited; use the file train.py or import_weights.py wrote"
STARTING_POINT = ("weights",)  # timm's starting weights: where a run began, not part of the network a file holds


def backbone_schema(name: str) -> type:
    """The config schema of registered backbone ``name``: the one whose fields are its builder's settings."""
    settings = set(inspect.signature(BACKBONES.get(name)).parameters) - {"embedding_size"}
    return next(schema for schema in SCHEMAS["backbone"].values()
                if {f.name for f in fields(schema)} - {"name"} == settings)


def checked_config(config: Any, path: Path) -> tuple[str, dict[str, Any], int]:
    """``(backbone name, its settings, embedding size)`` of a file's ``config``, held to the command line's
    rules (settings the file leaves out keep the backbone's defaults); a one-line ModelError naming the file
    and the key otherwise."""
    backbone = config.get("backbone") if isinstance(config, dict) else None
    if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str):
        raise ModelError(f"{path}: its config names no backbone (config.backbone.name)", DAMAGED)
    name = backbone["name"]
    if name not in BACKBONES:
        raise ModelError(f"{path} holds backbone '{name}', which this facetrain does not have",
                         f"it has: {', '.join(BACKBONES.names())}")
    schema = backbone_schema(name)
    given = {key: value for key, value in backbone.items() if key not in ("name", *STARTING_POINT)}
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), given)
    except OmegaConfBaseException as exc:
        problem = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: its config's backbone settings do not fit {name} ({problem})", DAMAGED) from None
    if any(OmegaConf.is_interpolation(node, key) for key in given):
        raise ModelError(f"{path}: its config's backbone settings hold an interpolation ('${{...}}')", DAMAGED)
    settings = {key: value for key, value in OmegaConf.to_container(node, enum_to_str=True).items()
                if key in given}  # OmegaConf.to_container marks the left-out ones '???'
    size = config.get("embedding_size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise ModelError(f"{path}: its config's embedding_size is {size!r}, not an integer", DAMAGED)
    checks = [("embedding_size", rules(TrainConfig)["embedding_size"], size)]
    checks += [(f"backbone.{key}", rules(schema).get(key), value) for key, value in settings.items()]
    for key, check, value in checks:
        if check is not None and not check.ok(value):
            raise ModelError(f"{path}: its config has {key}={value}, out of range ({check.valid})", DAMAGED)
    return name, settings, size


def meta_state_dict(name: str, hparams: dict[str, Any], embedding_size: int, path: Path) -> dict[str, torch.Tensor]:
    """The state dict of backbone ``name`` built on the meta device: every tensor's name and shape, no memory.
    A one-line ModelError naming ``path`` when the settings make no network."""
    try:
        with torch.device("meta"):
            return build_backbone(name, embedding_size, **hparams).state_dict()
    except ConfigError as exc:
        raise ModelError(f"{path}: the {name} it holds cannot be built ({exc.problem})", DAMAGED) from None
