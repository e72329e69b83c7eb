"""Vision Transformers for 112x112 faces in arcface_torch's layout (``vit_t``, ``vit_s``, ``vit_b``, ``vit_l``).

Written after ``recognition/arcface_torch/backbones/vit.py`` of insightface (github.com/deepinsight/insightface,
commit 7fadd420c2351d0ffa8cac403421c1a3ed733365), with the same state-dict keys and shapes as its
``VisionTransformer`` (``norm_layer="ln"``): a released arcface_torch ViT ``backbone.pth`` loads with
``strict=True``, and in eval mode the two compute the same function.

Patch embedding plus a learnt position embedding, pre-norm blocks (LayerNorm, multi-head attention without qkv
bias, LayerNorm, ReLU6 MLP) with stochastic depth rising linearly over the blocks, a final LayerNorm, then all
patch tokens flattened -> Linear -> BatchNorm1d -> Linear -> BatchNorm1d (``feature``). While training with
``mask_ratio > 0``, a random ``int(L * (1 - mask_ratio))`` of each sample's L tokens go through the blocks; the
learnt mask token fills the dropped positions before the flatten.

As in the official code, a stride-``patch_size`` convolution cuts the image into ``(image_size // patch_size)**2``
patches: 112 is not a multiple of 9, so 12x12 = 144 patches cover the top-left 108x108 pixels and the last 4
pixel rows and columns are never seen.

Differences from the official code: its ``forward_features`` calls ``random_masking(x)`` without its
``mask_ratio``, so it always masks the default 0.1 whatever it was built with (0.05 for ``vit_l``); ours masks
the configured ``mask_ratio`` (with the same draws at 0.1). Its ``no_weight_decay`` names ``cls_token``, which
it does not have; ours names ``pos_embed`` and ``mask_token``. It forces CUDA autocast (fp16) on the qkv,
projection and MLP layers even when the caller runs without AMP; ours follows the caller's autocast.

Precision under autocast: the attention logits, softmax and attention-weighted sum run in fp32 (the official
code disables autocast there), as do the final LayerNorm, the mask-token fill and the ``feature`` layers (a
36,864- to 110,592-term dot product per output); the patch embedding, qkv, projection and MLP run in the
autocast dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from facetrain.backbones.checkpointing import run_blocks
from facetrain.backbones.registry import BACKBONES
from facetrain.errors import ConfigError
from facetrain.precision import at_least_fp32, no_autocast


class ViTSettings(NamedTuple):
    """The settings arcface_torch's ``get_model`` gives each ViT (image 112, patch 9, MLP ratio 4)."""

    embed_dim: int
    depth: int
    num_heads: int
    drop_path_rate: float
    mask_ratio: float
    activation_checkpointing: bool


SETTINGS = {
    "vit_t": ViTSettings(256, 12, 8, 0.1, 0.1, False),
    "vit_s": ViTSettings(512, 12, 8, 0.1, 0.1, False),
    "vit_b": ViTSettings(512, 24, 8, 0.1, 0.1, True),
    "vit_l": ViTSettings(768, 24, 8, 0.05, 0.05, True),  # arcface_torch's vit_l_dp005_mask_005
}


class DropPath(nn.Module):
    """Stochastic depth: while training, zero a sample's residual branch with probability ``p``, scale the
    kept ones by ``1 / (1 - p)`` (one Bernoulli draw per sample, as timm's ``DropPath``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class PatchEmbed(nn.Module):
    """``[N, 3, H, W]`` -> ``[N, (H/p)*(W/p), embed_dim]`` tokens, by a stride-``p`` convolution."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; the logits, softmax and weighted sum in fp32 under autocast."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        with no_autocast(x):
            q, k, v = at_least_fp32(qkv).unbind(0)
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            x = (attn @ v).transpose(1, 2).reshape(n, length, dim)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear -> ReLU6 -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Face ViT: ``[N, 3, image_size, image_size] -> [N, embedding_size]`` raw embeddings."""

    def __init__(
        self,
        embedding_size: int = 512,
        image_size: int = 112,
        patch_size: int = 9,
        embed_dim: int = 256,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        mask_ratio: float = 0.1,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _check(image_size, patch_size, embed_dim, num_heads, drop_path_rate, mask_ratio)
        self.mask_ratio = mask_ratio
        self.activation_checkpointing = activation_checkpointing
        self.num_patches = (image_size // patch_size) ** 2
        # construction order as in the official code (parameters are listed first in the state dict)
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # as float32, like the official
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * self.num_patches, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=2e-5),
            nn.Linear(embed_dim, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters to train without weight decay (timm's convention)."""
        return {"pos_embed", "mask_token"}

    def _random_masking(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random ``int(L * (1 - mask_ratio))`` of each sample's ``L`` tokens, and the permutation that puts
        kept-then-dropped positions back in order."""
        n, length, dim = x.shape
        keep = int(length * (1 - self.mask_ratio))
        shuffle = torch.argsort(torch.rand(n, length, device=x.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        return torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, dim)), restore

    def _fill_masked(self, x: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """The kept tokens ``x`` back at their positions, the mask token at the dropped ones."""
        n, kept, dim = x.shape
        filler = self.mask_token.expand(n, restore.shape[1] - kept, dim)
        return torch.gather(torch.cat([x, filler], dim=1), 1, restore[:, :, None].expand(-1, -1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        restore = None
        if self.training and self.mask_ratio > 0:
            x, restore = self._random_masking(x)
        x = run_blocks(self.blocks, x, self.activation_checkpointing and self.training)
        with no_autocast(x):
            x = self.norm(at_least_fp32(x))
            if restore is not None:
                x = self._fill_masked(x, restore)
            return self.feature(x.flatten(1))


def _check(image_size: int, patch_size: int, embed_dim: int, num_heads: int, drop_path_rate: float,
           mask_ratio: float) -> None:
    """A ConfigError naming the keys for settings the network cannot be built with."""
    if not 1 <= patch_size <= image_size:
        raise ConfigError(f"backbone.patch_size={patch_size} does not fit backbone.image_size={image_size}",
                          "choose a patch size between 1 and the image size (arcface_torch: 9 at 112)")
    if embed_dim % num_heads:
        raise ConfigError(f"backbone.embed_dim={embed_dim} is not a multiple of backbone.num_heads={num_heads}",
                          "choose a number of heads that divides the embedding width")
    for key, value in (("drop_path_rate", drop_path_rate), ("mask_ratio", mask_ratio)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"backbone.{key}={value} is outside [0, 1)",
                              f"set backbone.{key} to 0 (off) or a fraction below 1")


def _register(name: str) -> None:
    s = SETTINGS[name]

    @BACKBONES.register(name)
    def build(embedding_size: int = 512, image_size: int = 112, patch_size: int = 9, embed_dim: int = s.embed_dim,
              depth: int = s.depth, num_heads: int = s.num_heads, mlp_ratio: float = 4.0,
              drop_path_rate: float = s.drop_path_rate, mask_ratio: float = s.mask_ratio,
              activation_checkpointing: bool = s.activation_checkpointing) -> VisionTransformer:
        return VisionTransformer(embedding_size, image_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                                 drop_path_rate, mask_ratio, activation_checkpointing)

    build.__doc__ = f"arcface_torch's {name}: {s.embed_dim}-d tokens, {s.depth} blocks of {s.num_heads} heads."


for _name in SETTINGS:
    _register(_name)
