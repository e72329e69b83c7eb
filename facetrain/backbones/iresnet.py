"""IResNet (Deng et al., ArcFace, CVPR 2019) in insightface's layout for 112x112 faces.

3x3 stride-1 stem, improved residual blocks (BN-Conv-BN-PReLU-Conv-BN), four stride-2 stages, and the
BN-Dropout-FC-BN embedding head ("option E" of the ArcFace paper).
"""
from __future__ import annotations

import torch
from torch import nn

from facetrain.backbones.checkpointing import run_blocks
from facetrain.backbones.embedding import FlattenEmbedding
from facetrain.backbones.registry import BACKBONES

STAGE_DEPTHS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)


class IBasicBlock(nn.Module):
    """Improved basic residual block: BN-Conv3x3-BN-PReLU-Conv3x3(stride)-BN + shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=1e-5),
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels, eps=1e-5),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels, eps=1e-5),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class IResNet(nn.Module):
    """IResNet backbone: ``[N,3,112,112] -> [N, embedding_size]`` raw embeddings."""

    def __init__(
        self,
        depths: tuple[int, ...],
        embedding_size: int = 512,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        self.stem = nn.Sequential(
            nn.Conv2d(3, STAGE_WIDTHS[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(STAGE_WIDTHS[0], eps=1e-5),
            nn.PReLU(STAGE_WIDTHS[0]),
        )
        blocks: list[nn.Module] = []
        in_channels = STAGE_WIDTHS[0]
        for depth, width in zip(depths, STAGE_WIDTHS):
            for i in range(depth):
                blocks.append(IBasicBlock(in_channels, width, stride=2 if i == 0 else 1))
                in_channels = width
        self.stages = nn.Sequential(*blocks)
        self.output = FlattenEmbedding(in_channels, 7 * 7, embedding_size, dropout)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    nn.init.constant_(module.residual[-1].weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.stages, self.stem(x), self.activation_checkpointing and self.training)
        return self.output(x)


def _register(name: str) -> None:
    @BACKBONES.register(name)
    def build(embedding_size: int = 512, dropout: float = 0.0, zero_init_residual: bool = False,
              activation_checkpointing: bool = False) -> IResNet:
        return IResNet(STAGE_DEPTHS[name], embedding_size, dropout, zero_init_residual, activation_checkpointing)

    build.__doc__ = f"IResNet-{name[1:]} with stage depths {STAGE_DEPTHS[name]}."


for _name in STAGE_DEPTHS:
    _register(_name)
