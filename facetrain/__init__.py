"""facetrain: config-driven face-recognition training."""
from facetrain.inference import load_backbone

__all__ = ["load_backbone"]
__version__ = "0.1.0"
