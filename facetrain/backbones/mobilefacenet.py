"""MobileFaceNet (Chen et al., 2018) as insightface's ``mbf``: depthwise bottlenecks and a GDC head.

``scale`` widens every stage (insightface uses 2); ``blocks`` sets the residual blocks per stage. Under
autocast the last 1x1 convolution, the GDC and the embedding layer run in fp32, as in arcface_torch
(``conv_sep(x.float())`` and ``features`` outside its autocast region).
"""
from __future__ import annotations

import torch
from torch import nn

from facetrain.backbones.checkpointing import refuse_checkpointing
from facetrain.backbones.registry import BACKBONES
from facetrain.precision import at_least_fp32, no_autocast


def conv_bn(
    in_c: int, out_c: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Conv-BN(-PReLU) with 'same' padding."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_c),
    ]
    if act:
        layers.append(nn.PReLU(out_c))
    return nn.Sequential(*layers)


class DepthwiseBottleneck(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection, with a shortcut when shapes match."""

    def __init__(self, in_c: int, out_c: int, expand_c: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(in_c, expand_c),
            conv_bn(expand_c, expand_c, 3, stride, groups=expand_c),
            conv_bn(expand_c, out_c, act=False),
        )
        self.residual = stride == 1 and in_c == out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone: ``[N,3,112,112] -> [N, embedding_size]`` raw embeddings."""

    def __init__(
        self, embedding_size: int = 512, blocks: tuple[int, ...] = (1, 4, 6, 2), scale: int = 2
    ) -> None:
        super().__init__()
        c64, c128 = 64 * scale, 128 * scale
        layers: list[nn.Module] = [conv_bn(3, c64, 3, 2)]
        if blocks[0] == 1:  # 64 groups at every width, as arcface_torch (depthwise only at scale 1)
            layers.append(conv_bn(c64, c64, 3, 1, groups=64))
        else:
            layers += [DepthwiseBottleneck(c64, c64, 128, 1) for _ in range(blocks[0])]
        # (in, out, expansion of the stride-2 block, expansion of the residual blocks, residual blocks)
        stages = ((c64, c64, 128, 128, blocks[1]), (c64, c128, 256, 256, blocks[2]), (c128, c128, 512, 256, blocks[3]))
        for in_c, out_c, down_expand, res_expand, n in stages:
            layers.append(DepthwiseBottleneck(in_c, out_c, down_expand, 2))
            layers += [DepthwiseBottleneck(out_c, out_c, res_expand, 1) for _ in range(n)]
        layers.append(conv_bn(c128, 512))
        self.body = nn.Sequential(*layers)
        # Global depthwise convolution (GDC): a learned 7x7 weighting of the final feature map.
        self.gdc = conv_bn(512, 512, 7, 1, groups=512, act=False)
        self.gdc[0].padding = (0, 0)
        self.fc = nn.Linear(512, embedding_size, bias=False)
        self.features = nn.BatchNorm1d(embedding_size)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *blocks, last_conv = self.body
        for block in blocks:
            x = block(x)
        with no_autocast(x):
            x = torch.flatten(self.gdc(last_conv(at_least_fp32(x))), 1)
            return self.features(self.fc(x))


@BACKBONES.register("mbf")
def build_mobilefacenet(
    embedding_size: int = 512, blocks: tuple[int, ...] = (1, 4, 6, 2), scale: int = 2,
    activation_checkpointing: bool = False,
) -> MobileFaceNet:
    """MobileFaceNet as insightface's ``mbf`` (blocks (1,4,6,2), scale 2)."""
    refuse_checkpointing("mbf", activation_checkpointing)
    return MobileFaceNet(embedding_size, tuple(blocks), scale)
