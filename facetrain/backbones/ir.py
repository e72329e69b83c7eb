"""IR and IR-SE (improved residual nets, with squeeze-and-excitation) in AdaFace's layout for 112x112 faces.

Written after ``net.py`` of AdaFace (Kim et al., CVPR 2022, github.com/mk-minchul/AdaFace, commit
c60eaa786a42c03444f3df7096dbaf9d57ae010d), with the same state-dict keys and shapes as its ``Backbone``:
an AdaFace checkpoint's ``state_dict`` without its ``model.`` prefix loads with ``strict=True``.

The same function family as insightface's IResNet (``iresnet.py``), differing in details:
- the shortcut is ``MaxPool2d(1, stride)`` (identity or subsampling) where the channels match, and a
  1x1 conv + BN only where they change (IResNet projects whenever stride or channels change);
- the stride sits on the last conv of the residual branch (the second 3x3 of a basic block, the closing
  1x1 of a bottleneck block); 152 and 200 layers use bottleneck blocks with 2048 output channels;
- the output BatchNorm1d has no affine parameters (IResNet keeps a fixed scale of 1 and a learnt shift);
- IR-SE adds an SE module (reduction 16) at the end of each residual branch.

Our forward returns the raw embedding; AdaFace's returns ``(x / ||x||, ||x||)``, the same information.
AdaFace's released weights were trained on BGR input: importing them means permuting the first conv's input
channels (done by the weights importer, not here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.backbones.checkpointing import run_blocks
from facetrain.backbones.registry import BACKBONES
from facetrain.precision import at_least_fp32, no_autocast

STAGE_DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BASIC_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_WIDTHS = (256, 512, 1024, 2048)  # from 152 layers on
# registry name -> (number of layers, squeeze-and-excitation); AdaFace's IR_101 is its 100-layer net
VARIANTS = {
    "ir_18": (18, False), "ir_34": (34, False), "ir_50": (50, False), "ir_101": (100, False),
    "ir_152": (152, False), "ir_200": (200, False),
    "ir_se_50": (50, True), "ir_se_101": (100, True), "ir_se_152": (152, True), "ir_se_200": (200, True),
}


class SqueezeExcite(nn.Module):
    """Channel gates from the global average: ``x * sigmoid(fc2(relu(fc1(mean(x)))))``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class IRBlock(nn.Module):
    """Residual block: ``res_layer(x) + shortcut_layer(x)``; basic (BN-Conv3x3-BN-PReLU-Conv3x3-BN) or
    bottleneck (BN-Conv1x1-BN-PReLU-Conv3x3-BN-PReLU-Conv1x1-BN at a quarter of the width), optionally + SE."""

    def __init__(self, in_channels: int, channels: int, stride: int, bottleneck: bool, se: bool) -> None:
        super().__init__()
        self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        if in_channels != channels:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))
        if bottleneck:
            mid = channels // 4
            layers = [
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, mid, 1, 1, 0, bias=False), nn.BatchNorm2d(mid), nn.PReLU(mid),
                nn.Conv2d(mid, mid, 3, 1, 1, bias=False), nn.BatchNorm2d(mid), nn.PReLU(mid),
                nn.Conv2d(mid, channels, 1, stride, 0, bias=False), nn.BatchNorm2d(channels),
            ]
        else:
            layers = [
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.PReLU(channels),
                nn.Conv2d(channels, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels),
            ]
        self.res_layer = nn.Sequential(*layers)
        if se:
            self.res_layer.add_module("se_block", SqueezeExcite(channels, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class OutputLayer(nn.Sequential):
    """BN2d -> dropout -> flatten -> FC -> BN1d without affine, at AdaFace's indices (0, 1, 2, 3, 4); the FC
    and BN1d run in fp32 under autocast, as in ``embedding.FlattenEmbedding``."""

    def __init__(self, channels: int, embedding_size: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels), nn.Dropout(dropout), nn.Flatten(),
            nn.Linear(channels * 7 * 7, embedding_size), nn.BatchNorm1d(embedding_size, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, dropout, flatten, fc, features = self
        x = flatten(dropout(bn(x)))
        with no_autocast(x):
            return features(fc(at_least_fp32(x)))


class IR(nn.Module):
    """IR / IR-SE backbone: ``[N,3,112,112] -> [N, embedding_size]`` raw embeddings."""

    def __init__(
        self,
        num_layers: int,
        se: bool = False,
        embedding_size: int = 512,
        dropout: float = 0.4,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        bottleneck = num_layers >= 152
        widths = BOTTLENECK_WIDTHS if bottleneck else BASIC_WIDTHS
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        # registered before the body, as in AdaFace: the state dict lists it second
        self.output_layer = OutputLayer(widths[-1], embedding_size, dropout)
        blocks: list[nn.Module] = []
        in_channels = 64
        for depth, width in zip(STAGE_DEPTHS[num_layers], widths):
            for i in range(depth):
                blocks.append(IRBlock(in_channels, width, 2 if i == 0 else 1, bottleneck, se))
                in_channels = width
        self.body = nn.Sequential(*blocks)
        self._init_weights()

    def _init_weights(self) -> None:
        """AdaFace's ``initialize_weights``: Kaiming-normal (fan out) convs and FC, zero biases, BN2d at 1/0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.body, self.input_layer(x), self.activation_checkpointing and self.training)
        return self.output_layer(x)


def _register(name: str) -> None:
    num_layers, se = VARIANTS[name]

    @BACKBONES.register(name)
    def build(embedding_size: int = 512, dropout: float = 0.4, activation_checkpointing: bool = False) -> IR:
        return IR(num_layers, se, embedding_size, dropout, activation_checkpointing)

    build.__doc__ = f"AdaFace's IR{'-SE' if se else ''}-{num_layers} with stage depths {STAGE_DEPTHS[num_layers]}."


for _name in VARIANTS:
    _register(_name)
