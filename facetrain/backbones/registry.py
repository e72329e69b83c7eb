"""The backbone registry: ``backbone=<name>`` picks ``BACKBONES.get(name)``."""
from facetrain.registry import Registry

BACKBONES: Registry = Registry("backbone")
