"""Checks of a head's settings that need the head itself (the config layer's ranges cannot see its formula)."""
from __future__ import annotations

import math
from typing import Any

import torch

from facetrain.errors import ConfigError
from facetrain.heads import MarginHead, build_head


def check_margin(loss: dict[str, Any]) -> None:
    """Refuse a margin head (``loss``: the ``loss`` config group as plain values, with its ``name``) whose target
    logit is not below the plain one (``s * cos``) at some angle in (0, 90] degrees: it makes the true class easier
    instead of harder, and the loss falls to 0 without learning."""
    settings = dict(loss)
    name = settings.pop("name")
    if name == "center":
        name, settings = settings["base"], dict(settings.get("base_args") or {})
    head = build_head(name, 2, 2, **settings)
    if not isinstance(head, MarginHead):
        return
    theta = torch.linspace(0.01, math.pi / 2, 158, dtype=torch.float64)
    cos = theta.cos().unsqueeze(1)
    with torch.no_grad():
        target = head.double().eval().target_cosine(cos, torch.full((len(theta), 2), 20.0, dtype=torch.float64))
    easier = (target > cos + 1e-9).flatten()
    if easier.any():
        degrees = math.degrees(float(theta[easier][0]))
        raise ConfigError(f"loss={name} with these margins does not penalise the true class: at {degrees:.0f} degrees "
                          f"its target logit is above s*cos (the loss falls to 0 without learning)",
                          "use the paper's margins (see configs/loss/" + name + ".yaml)")
