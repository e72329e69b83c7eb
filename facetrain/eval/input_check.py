"""Which input convention an imported model really wants: verification accuracy with RGB and BGR input,
with and without the mirror image. A wrong channel order costs whole points of accuracy and fails silently."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facetrain.eval.callback import VerificationCallback

CONVENTIONS = [("RGB", "sum"), ("RGB", "none"), ("BGR", "sum"), ("BGR", "none")]  # the first is facetrain's


class SwapRedBlue(nn.Module):
    """Feeds ``backbone`` the image with its colour channels reversed (RGB <-> BGR)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x.flip(1))


def convention_accuracies(backbone: nn.Module, callback: VerificationCallback) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(channel order, flip): {target: result}}`` for every convention of :data:`CONVENTIONS`."""
    results = {}
    for order, flip in CONVENTIONS:
        callback.flip = flip
        results[(order, flip)] = callback(backbone if order == "RGB" else SwapRedBlue(backbone))
    return results


def convention_warnings(results: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """A line for every target on which facetrain's convention (RGB, image + mirror) is beaten by more
    than half a standard deviation of its folds."""
    warnings = []
    ours = results[CONVENTIONS[0]]
    for target, result in ours.items():
        best = max(results, key=lambda convention: results[convention][target]["accuracy"])
        margin = results[best][target]["accuracy"] - result["accuracy"]
        if best != CONVENTIONS[0] and margin > 0.5 * max(result["std"], 1e-3):
            order, flip = best
            fix = ("the file's model was not trained on the channel order it was imported with: import it again "
                   "with the other --input-order" if order == "BGR" else "check the alignment of the images")
            warnings.append(f"warning: {target}: {100 * results[best][target]['accuracy']:.2f}% with {order} input and "
                            f"flip {flip}, {100 * result['accuracy']:.2f}% with facetrain's RGB + mirror image; {fix}")
    return warnings
