"""Any timm network as a face backbone: ``backbone=timm backbone.model=convnext_tiny``.

The network's unpooled features at 112x112 (a CNN's feature map, a ViT's tokens, a Swin's NHWC map) go
through the shared flatten embedding layer (:class:`FlattenEmbedding`: BN, dropout, flatten, FC, BN),
which keeps their spatial layout as insightface's heads do. timm is an optional extra
(``pip install -e ".[timm]"``) imported only when such a backbone is built. Transformer models get
``img_size=112`` (their position embeddings are made for it); CNNs take any size as they are.

``backbone.weights`` starts the body from timm weights in a local file (``.safetensors``, or a ``.pth``/
``.bin`` state dict read without running code, see :mod:`facetrain.untrusted`); timm's own filter
adapts them (e.g. a ViT's position embedding resampled from 224 to 112) and drops the classifier.
Nothing is ever downloaded.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from facetrain.backbones.embedding import FlattenEmbedding
from facetrain.backbones.registry import BACKBONES
from facetrain.errors import ConfigError, ModelError
from facetrain.untrusted import load_torch_file

IMAGE_SIZE = 112


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("backbone=timm needs the timm package, which is not installed",
                          'pip install -e ".[timm]" (or pip install timm)') from None
    return timm


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` file or a torch file (tensors only, never code)."""
    if not path.is_file():
        raise ConfigError(f"backbone.weights={path} does not exist", "pass the path of a local timm weight file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_torch_file(path, "a timm weight file holds only tensors")
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors", "pass timm's .safetensors or .pth weights of the model")
    return state


def create_body(model: str, weights: Optional[Path]) -> nn.Module:
    """The timm network ``model`` without its classifier and pooling, at 112x112, from ``weights`` if given."""
    timm = _timm()
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=5)
        raise ConfigError(f"backbone.model={model} is not a timm model",
                          f"did you mean one of: {', '.join(close)}?" if close else "see timm.list_models()")
    options: dict[str, Any] = {"num_classes": 0, "global_pool": "", "pretrained": weights is not None}
    if weights is not None:
        options["pretrained_cfg_overlay"] = {"state_dict": read_weights(weights), "source": ""}
    try:
        return timm.create_model(model, img_size=IMAGE_SIZE, **options)
    except TypeError:  # a CNN: its constructor takes no image size
        return timm.create_model(model, **options)


class TimmBackbone(nn.Module):
    """``body.forward_features`` (a timm network) followed by :class:`FlattenEmbedding`."""

    def __init__(self, body: nn.Module, embedding_size: int, dropout: float) -> None:
        super().__init__()
        self.body = body
        self.channels_last_output = getattr(body, "output_fmt", "NCHW") == "NHWC"  # Swin-style
        with torch.no_grad():
            shape = self.feature_map(body.eval().forward_features(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))).shape
        body.train()
        self.output = FlattenEmbedding(shape[1], shape[2] * shape[3], embedding_size, dropout)

    def feature_map(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` from a CNN's map, a Swin's ``[N, H, W, C]`` or a ViT's tokens ``[N, L, C]`` (as ``L x 1``)."""
        if features.dim() == 3:
            return features.transpose(1, 2).unsqueeze(-1)
        return features.permute(0, 3, 1, 2) if self.channels_last_output else features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.feature_map(self.body.forward_features(x)))

    def no_weight_decay(self) -> set[str]:
        """The body's own no-decay parameters (position embeddings, tokens), as timm names them."""
        names = self.body.no_weight_decay() if hasattr(self.body, "no_weight_decay") else set()
        return {f"body.{name}" for name in names}


@BACKBONES.register("timm")
def build_timm(embedding_size: int = 512, model: str = "convnext_tiny", weights: Optional[str] = None,
               dropout: float = 0.0, activation_checkpointing: bool = False) -> TimmBackbone:
    """timm's ``model`` (any ``timm.list_models()`` name) with the face embedding layer."""
    body = create_body(model, Path(weights) if weights else None)
    if activation_checkpointing:
        try:
            body.set_grad_checkpointing(True)
        except (AssertionError, AttributeError, NotImplementedError):
            raise ConfigError(f"backbone.activation_checkpointing=true: timm's {model} does not support it",
                              "drop it, or pick a model that does") from None
    return TimmBackbone(body, embedding_size, dropout)
