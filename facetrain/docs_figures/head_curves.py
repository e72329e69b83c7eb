"""Pictures of every loss head (the X2-Softmax paper's figures 3 and 4), computed by the heads themselves.

``target_logits.png``: the target logit ``f(theta)`` (divided by the scale ``s``, or by ``||x||`` for the
unnormalised heads) against the angle to the class centre, one panel per family of heads on the same axes.
``angular_margins.png``: for two classes whose centres are ``phi`` apart, the angle between the two decision
boundaries (the angular margin) against ``phi``. ``x2softmax_margin.png``: how X2-Softmax's boundary and
margin follow from ``cos(phi - t) = f(t)``. Every curve comes from a forward pass of the head (eval mode:
stateful heads use their buffers, ElasticFace its mean margin), so the pictures show the code, not a
transcription of the papers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from facetrain.heads import Head, build_head  # noqa: E402

NORM = 30.0  # feature norm of the probe embeddings
STYLES = ("-", "--", ":", "-.")
Variant = tuple[str, dict, Callable[[Head], None]]  # label, hyperparameters, state set-up
# panels of target_logits.png: heads whose target logits share a form; a head not named here gets its own
FAMILIES = {
    "plain (no margin)": ("softmax", "normface", "center"),
    "additive angular (ArcFace)": ("arcface", "subcenter_arcface", "curricularface", "elasticface"),
    "additive cosine (CosFace)": ("cosface",),
    "combined margins": ("combined",),
    "multiplicative angular (SphereFace)": ("sphereface",),
    "norm-aware (MagFace)": ("magface",),
    "norm-adaptive (AdaFace)": ("adaface",),
    "quadratic (X2-Softmax)": ("x2softmax",),
}
BISECTIONS = 40  # halvings of the grid step when locating a boundary (far below a thousandth of a degree)


def no_setup(head: Head) -> None:
    pass


def _set(**buffers: float) -> Callable[[Head], None]:
    def setup(head: Head) -> None:
        for name, value in buffers.items():
            getattr(head, name).fill_(value)

    return setup


def variants(name: str) -> list[Variant]:
    """The curves drawn for one head: defaults, plus the settings that change its shape."""
    if name == "adaface":  # statistics chosen so that the probe norm gives z = -1, 0, +1
        return [(f"adaface z={z:+d}", {}, _set(batch_mean=NORM - z * 3.0 / 0.333, batch_std=3.0))
                for z in (-1, 0, 1)]
    if name == "magface":
        return [(f"magface a={a:g}", {"_norm": a}, no_setup) for a in (10.0, 110.0)]
    if name == "sphereface":
        return [("sphereface (lambda=5)", {}, _set(iteration=10**6))]
    if name == "curricularface":
        return [("curricularface t=0", {}, no_setup), ("curricularface t=0.5", {}, _set(t=0.5))]
    return [(name, {}, no_setup)]


def families(names: list[str]) -> dict[str, list[str]]:
    """The panels for ``names``: each family's heads among them, then one panel per head in no family."""
    panels = {title: [name for name in members if name in names] for title, members in FAMILIES.items()}
    known = {name for members in FAMILIES.values() for name in members}
    panels.update({name: [name] for name in names if name not in known})
    return {title: members for title, members in panels.items() if members}


def two_classes(name: str, hparams: dict, setup: Callable[[Head], None], phi: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A 2-class head with centres at angles 0 and ``phi``, as a function of embedding angles ``thetas`` (label
    0) giving the logits ``[len(thetas), 2]``, each divided by the head's scale."""
    hparams = dict(hparams)
    norm = hparams.pop("_norm", NORM)
    head = build_head(name, embedding_size=2, num_classes=2, **hparams).double().eval()
    centres = torch.tensor([[1.0, 0.0], [math.cos(phi), math.sin(phi)]], dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(centres.repeat_interleave(head.weight.shape[0] // 2, dim=0))
        setup(head)

    def logits(thetas: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = norm * torch.stack([torch.cos(thetas), torch.sin(thetas)], dim=1)
            return head(x, torch.zeros(len(thetas), dtype=torch.long)).logits / getattr(head, "s", norm)

    return logits


def probe(name: str, hparams: dict, setup: Callable[[Head], None], phi: float, thetas: torch.Tensor) -> torch.Tensor:
    """:func:`two_classes`' logits at ``thetas``."""
    return two_classes(name, hparams, setup, phi)(thetas)


def target_logits(out: Path, names: list[str]) -> Path:
    """``target_logits.png``: one panel per family, the same axes, plain ``cos(theta)`` in grey in each;
    curves of one panel that coincide are drawn once, their labels joined."""
    thetas = torch.linspace(0, math.pi, 361, dtype=torch.float64)
    degrees = torch.rad2deg(thetas)
    panels = families(names)
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (title, members) in zip(axes.flat, panels.items()):
        drawn: list[tuple[list[str], torch.Tensor]] = []
        for name in members:
            for label, hparams, setup in variants(name):
                f = probe(name, hparams, setup, math.pi / 2, thetas)[:, 0]
                same = next((entry for entry in drawn if torch.allclose(entry[1], f, atol=1e-9)), None)
                if same:
                    same[0].append(label)
                else:
                    drawn.append(([label], f))
        ax.plot(degrees, torch.cos(thetas), color="0.7", lw=1, label="cos(theta)")
        for i, (labels, f) in enumerate(drawn):
            ax.plot(degrees, f, color=plt.get_cmap("tab10")(i), ls=STYLES[i % len(STYLES)], lw=1.6,
                    label=" = ".join(labels))
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("theta (degrees)")
    for ax in axes[:, 0]:
        ax.set_ylabel("target logit / s")
    axes[0, 0].set(xlim=(0, 180), ylim=(-3, 1.1), xticks=[0, 45, 90, 135, 180])
    fig.suptitle("Target logit f(theta) of every head, by family (angle to the class centre)")
    return _save(fig, out / "target_logits.png")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def boundary(name: str, hparams: dict, setup: Callable[[Head], None], phi: float, points: int) -> float:
    """Where class 0's region ends on the arc from ``phi - pi`` (opposite class 1) to ``phi`` (on class 1):
    the last of ``points`` probe angles where class 0's logit is not below class 1's, refined by bisection
    towards the next probe (radians; nan where class 0 wins nowhere)."""
    thetas = torch.linspace(phi - math.pi, phi, points, dtype=torch.float64)
    head = two_classes(name, hparams, setup, phi)
    logits = head(thetas)
    wins = (logits[:, 0] >= logits[:, 1]).nonzero()
    if not len(wins):
        return math.nan  # class 0 wins nowhere (e.g. ArcFace with phi < m): no boundary, no margin
    last = wins[-1, 0].item()
    if last == points - 1:
        return phi
    low, high = thetas[last].item(), thetas[last + 1].item()
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        logits = head(torch.tensor([middle], dtype=torch.float64))[0]
        low, high = (middle, high) if logits[0] >= logits[1] else (low, middle)
    return low


def angular_margin(name: str, hparams: dict, setup: Callable[[Head], None], phi: float, points: int) -> float:
    """Angle between the two decision boundaries of classes ``phi`` apart (degrees).

    Class 0 wins up to its boundary ``t`` (:func:`boundary`); by symmetry the margin is ``phi - 2t``. It
    exceeds ``phi`` when ``t < 0``: a target logit whose maximum is below ``cos(phi)`` (X2-Softmax's ``k``,
    CosFace's ``1 - m``) cannot win even on its own centre, and its boundary lies beyond it.
    """
    return math.degrees(phi - 2 * boundary(name, hparams, setup, phi, points))


def margin_curves(out: Path, names: list[str], points: int, angles: int) -> Path:
    """``angular_margins.png``: every head's margin against the angle between the two centres."""
    phis = torch.linspace(1, 180, angles, dtype=torch.float64).tolist()
    fig, ax = plt.subplots(figsize=(11, 6))
    for i, name in enumerate(names):
        for j, (label, hparams, setup) in enumerate(variants(name)):
            margins = [angular_margin(name, hparams, setup, math.radians(phi), points) for phi in phis]
            ax.plot(phis, margins, label=label, color=plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2),
                    ls=STYLES[j % 3], lw=2.2 if name == "x2softmax" else 1.4)
    ax.set(xlabel="phi: angle between the two class centres (degrees)", ylabel="angular margin (degrees)",
           title="Angular margin between two classes (X2-Softmax paper, fig. 4)", xlim=(0, 180), ylim=(0, 120))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out / "angular_margins.png")


def x2softmax_margins(phis_deg: list[float], points: int) -> list[tuple[float, float, float]]:
    """``(phi, boundary t, margin phi - 2t)`` in degrees of the project's X2-Softmax head at its defaults."""
    rows = []
    for phi in phis_deg:
        t = math.degrees(boundary("x2softmax", {}, no_setup, math.radians(phi), points))
        rows.append((phi, t, phi - 2 * t))
    return rows


def x2softmax_picture(out: Path, points: int, angles: int, shown: tuple[float, ...] = (50.0, 95.0, 180.0)) -> Path:
    """``x2softmax_margin.png``: left, the target logit ``f(t)`` and the other class's ``cos(phi - t)`` for a
    few ``phi``, the boundary where they cross; right, the margin ``phi - 2t`` against ``phi`` (ArcFace and
    CosFace beside it)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    ts = torch.linspace(math.radians(-30), math.radians(120), 301, dtype=torch.float64)
    left.plot(torch.rad2deg(ts), probe("x2softmax", {}, no_setup, math.pi, ts)[:, 0], color="black", lw=2,
              label="f(t) = a*t^2 + k")
    for i, (phi, t, margin) in enumerate(x2softmax_margins(list(shown), points)):
        colour = plt.get_cmap("tab10")(i)
        logits = probe("x2softmax", {}, no_setup, math.radians(phi), ts)
        left.plot(torch.rad2deg(ts), logits[:, 1], color=colour, ls="--", label=f"cos({phi:g} - t)")
        f_t = probe("x2softmax", {}, no_setup, math.radians(phi), torch.tensor([math.radians(t)]).double())[0, 0]
        left.plot([t], [f_t], "o", color=colour)
        left.annotate(f"t={t:.1f}, margin {margin:.1f}", (t, f_t), textcoords="offset points", xytext=(6, -12),
                      fontsize=8, color=colour)
    left.set(xlabel="t: angle to the own centre, on the arc towards the other (degrees)", ylabel="logit / s",
             title="Boundary: cos(phi - t) = f(t)", ylim=(-1.1, 1.1))
    left.legend(fontsize=8)
    phis = torch.linspace(40, 180, angles, dtype=torch.float64).tolist()
    rows = x2softmax_margins(phis, points)
    right.plot(phis, [margin for _, _, margin in rows], color="black", lw=2, label="x2softmax (a=-0.9, h=0, k=0.65)")
    for name, ls in (("arcface", "--"), ("cosface", ":")):
        right.plot(phis, [angular_margin(name, {}, no_setup, math.radians(phi), points) for phi in phis],
                   ls=ls, color="grey", label=name)
    lowest = min(rows, key=lambda row: row[2])
    right.plot([lowest[0]], [lowest[2]], "o", color="black")
    right.annotate(f"minimum {lowest[2]:.1f} near phi={lowest[0]:.0f}", (lowest[0], lowest[2]),
                   textcoords="offset points", xytext=(0, -16), ha="center", fontsize=8)
    right.set(xlabel="phi: angle between the two class centres (degrees)", ylabel="angular margin phi - 2t (degrees)",
              title="X2-Softmax's angular margin is U-shaped", xlim=(40, 180), ylim=(0, 80))
    right.legend(fontsize=8)
    return _save(fig, out / "x2softmax_margin.png")
