"""Pure conversions between the field's weight layouts and ours (``state_dict -> state_dict``).

Every facetrain model takes RGB input normalised as ``(x/255 - 0.5) / 0.5``. A model trained on BGR input
(AdaFace's) is converted once: its first convolution's input channels are reversed, so it computes the
same function of the RGB image that it computed of the BGR one.
"""
from __future__ import annotations

from typing import Optional

import torch

from facetrain.errors import ModelError
from facetrain.weights.layouts import Layout, official_keys

CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # torchvision's ImageNet classifiers, not part of a face backbone


def first_conv_key(state: dict[str, torch.Tensor]) -> str:
    """The key of the first convolution that reads the 3 input channels."""
    return next(key for key, value in state.items() if value.dim() == 4 and value.shape[1] == 3)


def swap_red_blue(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its first convolution's input channels reversed (a BGR model made RGB, and back)."""
    key = first_conv_key(state)
    return {**state, key: state[key].flip(1)}


def _fit(source: dict[str, torch.Tensor], names: dict[str, str], target: dict[str, torch.Tensor],
         what: str) -> dict[str, torch.Tensor]:
    """``target`` with ``source[a]`` in place of ``target[names[a]]``, cast to the target's dtype; a
    ModelError naming the first tensor whose shape differs."""
    fitted = dict(target)
    for key, ours in names.items():
        value = source[key]
        if value.shape != target[ours].shape:
            raise ModelError(f"{what}: {key} has shape {tuple(value.shape)}, the backbone's {ours} has "
                             f"{tuple(target[ours].shape)}", "pass the backbone the file was trained as")
        fitted[ours] = value.to(target[ours].dtype)
    return fitted


def _same_keys(state: dict[str, torch.Tensor], expected: list[str], what: str) -> None:
    missing, extra = [k for k in expected if k not in state], [k for k in state if k not in set(expected)]
    if missing or extra:
        detail = ", ".join(part for part in (f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                                             f"{len(extra)} extra (e.g. {extra[0]})" if extra else "") if part)
        raise ModelError(f"{what} does not match the backbone's keys: {detail}",
                         "pass the backbone the file was trained as (the file may be damaged or edited)")


def to_facetrain(state: dict[str, torch.Tensor], layout: Layout, target: dict[str, torch.Tensor],
                 what: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` (of ``layout``) in the keys of ``target``, our backbone's state dict, and the keys of
    ``target`` the file does not provide (a torchvision file's face embedding layer: they keep ``target``'s
    values). Converts a BGR-trained model to RGB input."""
    names: dict[str, str]
    if layout.source == "torchvision":
        body = [key for key in state if not key.startswith(CLASSIFIER_PREFIXES)]
        ours = [key for key in target if key.startswith("body.")]
        if len(body) != len(ours):
            raise ModelError(f"{what} has {len(body)} body tensors, {layout.backbone}'s body has {len(ours)}",
                             "pass the torchvision file of the same network")
        names = dict(zip(body, ours))
    else:
        official: Optional[list[str]] = official_keys(layout)
        expected = official if official is not None else list(target)
        _same_keys(state, expected, what)
        names = dict(zip(expected, target))
    converted = _fit(state, names, target, what)
    if layout.channel_order == "BGR":
        converted = swap_red_blue(converted)
    return converted, [key for key in target if key not in set(names.values())]


def to_official(state: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Our backbone's ``state`` in ``layout``'s own keys (and channel order): the inverse of :func:`to_facetrain`."""
    if layout.channel_order == "BGR":
        state = swap_red_blue(state)
    official = official_keys(layout)
    if official is None:
        return dict(state)
    if len(official) != len(state):
        raise ModelError(f"the backbone has {len(state)} tensors, {layout.description} has {len(official)}",
                         "export with --format safetensors instead")
    return dict(zip(official, state.values()))
