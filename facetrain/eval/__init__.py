"""Evaluation: the 10-fold verification protocol, ROC figures, IJB-B/C 1:1, embedding extraction and the
training callback."""
from facetrain.eval.callback import VerificationCallback
from facetrain.eval.embed import embed_images
from facetrain.eval.verification import evaluate

__all__ = ["VerificationCallback", "embed_images", "evaluate"]
