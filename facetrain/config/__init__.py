"""Configuration: the typed schemas of every config group (Hydra's ConfigStore), the rule for every key's range
(:mod:`facetrain.config.checks`), and Hydra's optional plugins as facetrain configures them
(:mod:`facetrain.config.plugins`)."""
from __future__ import annotations

from pathlib import Path

from facetrain.config.groups import SCHEMAS
from facetrain.config.schema import IDENTITY_KEYS, TrainConfig, register_schemas

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the folder train.py composes from

__all__ = ["CONFIG_DIR", "IDENTITY_KEYS", "SCHEMAS", "TrainConfig", "register_schemas"]
