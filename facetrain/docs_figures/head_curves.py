"""Pictures of every loss head (the X2-Softmax paper's figures 3 and 4), computed by the heads themselves.

    python scripts/plot_margins.py --out outputs/plots

``target_logits.png``: the target logit ``f(theta)`` (divided by the scale ``s``, or by ``||x||`` for the
unnormalised heads) against the angle to the class centre. ``angular_margins.png``: for two classes whose
centres are ``phi`` apart, the angle between the two decision boundaries (the angular margin) against
``phi``. Every curve comes from a forward pass of the head (eval mode: stateful heads use their buffers,
ElasticFace its mean margin), so the pictures show the code, not a transcription of the papers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from facetrain.cli import script_parser
from facetrain.heads import HEADS, Head, build_head  # noqa: E402

NORM = 30.0  # feature norm of the probe embeddings
STYLES = ("-", "--", ":")
Variant = tuple[str, dict, Callable[[Head], None]]  # label, hyperparameters, state set-up


def _no_setup(head: Head) -> None:
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
        return [(f"magface a={a:g}", {"_norm": a}, _no_setup) for a in (10.0, 110.0)]
    if name == "sphereface":
        return [("sphereface (lambda=5)", {}, _set(iteration=10**6))]
    if name == "curricularface":
        return [("curricularface t=0", {}, _no_setup), ("curricularface t=0.5", {}, _set(t=0.5))]
    if name == "x2softmax":
        return [("x2softmax", {}, _no_setup)]
    return [(name, {}, _no_setup)]


def colour(i: int) -> tuple:
    """tab20's ten dark colours first, then their light partners."""
    return plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2)


def probe(name: str, hparams: dict, setup: Callable[[Head], None], phi: float, thetas: torch.Tensor):
    """Logits ``[len(thetas), 2]`` of a 2-class head with centres at angles 0 and ``phi``, for embeddings
    at angles ``thetas`` (label 0), each divided by the head's scale."""
    hparams = dict(hparams)
    norm = hparams.pop("_norm", NORM)
    head = build_head(name, embedding_size=2, num_classes=2, **hparams).double().eval()
    centres = torch.tensor([[1.0, 0.0], [math.cos(phi), math.sin(phi)]], dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(centres.repeat_interleave(head.weight.shape[0] // 2, dim=0))
        setup(head)
        x = norm * torch.stack([torch.cos(thetas), torch.sin(thetas)], dim=1)
        logits = head(x, torch.zeros(len(thetas), dtype=torch.long)).logits
    return logits / getattr(head, "s", norm)


def target_curves(out: Path, names: list[str]) -> Path:
    thetas = torch.linspace(0, math.pi, 361, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(11, 6))
    for i, name in enumerate(names):
        for j, (label, hparams, setup) in enumerate(variants(name)):
            f = probe(name, hparams, setup, math.pi / 2, thetas)[:, 0]
            ax.plot(torch.rad2deg(thetas), f, label=label, color=colour(i), ls=STYLES[j % 3],
                    lw=2.2 if name == "x2softmax" else 1.4)
    ax.set(xlabel="theta: angle to the class centre (degrees)", ylabel="target logit / s",
           title="Target logit f(theta) of every head", xlim=(0, 180), ylim=(-3, 1.1))
    ax.axhline(0, color="grey", lw=0.5)
    return save_with_legend(fig, ax, out / "target_logits.png")


def save_with_legend(fig: plt.Figure, ax: plt.Axes, path: Path) -> Path:
    """Put the legend right of the axes, save the figure as ``path`` and close it."""
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def angular_margin(name: str, hparams: dict, setup: Callable[[Head], None], phi: float, points: int) -> float:
    """Angle between the two decision boundaries of classes ``phi`` apart (degrees).

    Probes run in the plane of the centres from ``phi - pi`` (opposite class 1) to ``phi`` (on class 1).
    Class 0 wins up to ``a``, the last probe where its logit is not below class 1's; by symmetry the
    margin is ``phi - 2a``. It exceeds ``phi`` when ``a < 0``: a target logit whose maximum is below
    ``cos(phi)`` (X2-Softmax's ``k``, CosFace's ``1 - m``) cannot win even on its own centre, and its
    boundary lies beyond it.
    """
    thetas = torch.linspace(phi - math.pi, phi, points, dtype=torch.float64)
    logits = probe(name, hparams, setup, phi, thetas)
    wins = (logits[:, 0] >= logits[:, 1]).nonzero()
    if not len(wins):
        return math.nan  # class 0 wins nowhere (e.g. ArcFace with phi < m): no boundary, no margin
    return math.degrees(phi - 2 * thetas[wins[-1, 0]].item())


def margin_curves(out: Path, names: list[str], points: int, angles: int) -> Path:
    phis = torch.linspace(1, 180, angles, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(11, 6))
    for i, name in enumerate(names):
        for j, (label, hparams, setup) in enumerate(variants(name)):
            margins = [angular_margin(name, hparams, setup, math.radians(phi), points) for phi in phis.tolist()]
            ax.plot(phis, margins, label=label, color=colour(i), ls=STYLES[j % 3],
                    lw=2.2 if name == "x2softmax" else 1.4)
    ax.set(xlabel="phi: angle between the two class centres (degrees)", ylabel="angular margin (degrees)",
           title="Angular margin between two classes (X2-Softmax paper, fig. 4)", xlim=(0, 180), ylim=(0, 120))
    return save_with_legend(fig, ax, out / "angular_margins.png")


def main(argv: list[str] | None = None) -> None:
    parser = script_parser("plot_margins", __doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/plots"), help="folder for the PNGs")
    parser.add_argument("--heads", default=",".join(HEADS.names()), help="comma-separated head names")
    parser.add_argument("--points", type=int, default=2001, help="probe angles per boundary search")
    parser.add_argument("--angles", type=int, default=90, help="angles between the centres in the margin plot")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest at this size)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = [name for name in args.heads.split(",") if name]
    torch.manual_seed(0)
    for path in (target_curves(args.out, names), margin_curves(args.out, names, args.points, args.angles)):
        print(path)


if __name__ == "__main__":
    main()
