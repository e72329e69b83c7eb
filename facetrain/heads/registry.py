"""The head registry: ``loss=<name>`` picks ``HEADS.get(name)``."""
from facetrain.registry import Registry

HEADS: Registry = Registry("loss")
