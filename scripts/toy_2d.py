"""Train each head with 2-D embeddings on a few synthetic identities and plot the features per class.

    python scripts/toy_2d.py --out outputs/toy_2d --heads softmax,center,arcface,x2softmax

The Center Loss paper's figure 2 and the X2-Softmax paper's toy example. Each of ``--identities``
identities is a random prototype in ``R^dim``; its samples add Gaussian within-identity variation
(``--noise``). A small MLP maps them to ``R^2`` and every head trains the same network from the same seed
for ``--steps`` Adam steps. (The built-in rendered faces would need far more than the few-minute budget
to separate in two dimensions with a network that small.) Held-out samples are embedded and drawn, one
colour per class, with the class centres as rays and each class's angular standard deviation (RMS angle
to the class's mean direction, degrees) printed beside it. The numbers go to ``toy_2d.json`` beside
``toy_2d.png``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from facetrain.cli import script_parser
from facetrain.heads import HEADS, Head, build_head  # noqa: E402

Data = tuple[torch.Tensor, torch.Tensor]


def identities(count: int, per_identity: int, dim: int, noise: float, seed: int) -> Data:
    """Samples ``[count * per_identity, dim]`` (prototype + noise) and their labels."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(count, dim, generator=generator)
    labels = torch.arange(count).repeat_interleave(per_identity)
    return prototypes[labels] + noise * torch.randn(len(labels), dim, generator=generator), labels


def embedder(dim: int, hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.PReLU(hidden), nn.Linear(hidden, hidden), nn.PReLU(hidden),
                         nn.Linear(hidden, 2))


def train(
    name: str, data: Data, classes: int, steps: int, batch: int, lr: float, seed: int
) -> tuple[nn.Module, Head, float]:
    torch.manual_seed(seed)
    x, y = data
    net, head = embedder(x.shape[1]), build_head(name, embedding_size=2, num_classes=classes)
    optimizer = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for _ in range(steps):
        pick = torch.randint(len(y), (batch,), generator=generator)
        loss = head(net(x[pick]), y[pick]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval(), head.eval(), loss.item()


def class_centres(head: Head) -> tuple[torch.Tensor, torch.Tensor]:
    """Every centre row ``[rows, 2]`` (sub-center ArcFace has several per class) and its class."""
    weight = head.weight.detach()
    return weight, torch.arange(head.num_classes).repeat_interleave(weight.shape[0] // head.num_classes)


def angular_stats(features: torch.Tensor, labels: torch.Tensor, head: Head) -> dict:
    """Per-class RMS angle (degrees) to the class's mean direction, and nearest-centre accuracy."""
    angles = torch.atan2(features[:, 1], features[:, 0])
    stds = {}
    for c in labels.unique().tolist():
        a = angles[labels == c]
        mean = torch.atan2(a.sin().mean(), a.cos().mean())
        stds[c] = math.degrees(torch.remainder(a - mean + math.pi, 2 * math.pi).sub(math.pi).pow(2).mean().sqrt())
    rows, owner = class_centres(head)
    nearest = owner[(F.normalize(features) @ F.normalize(rows).T).argmax(dim=1)]
    return {"angular_std_deg": stds, "mean_angular_std_deg": sum(stds.values()) / len(stds),
            "nearest_centre_accuracy": (nearest == labels).float().mean().item()}


def draw(ax: plt.Axes, name: str, features: torch.Tensor, labels: torch.Tensor, head: Head, stats: dict) -> None:
    colours = plt.get_cmap("tab10")
    ax.scatter(features[:, 0], features[:, 1], c=[colours(c % 10) for c in labels.tolist()], s=4, alpha=0.6)
    radius = features.norm(dim=1).quantile(0.95).item() or 1.0
    rows, owner = class_centres(head)
    for row, c in zip(F.normalize(rows).tolist(), owner.tolist()):
        ax.plot([0, row[0] * radius], [0, row[1] * radius], color=colours(c % 10), lw=1, alpha=0.8)
    for c, std in stats["angular_std_deg"].items():
        mine = features[labels == c]
        direction = F.normalize(mine.mean(0), dim=0) * radius * 1.12
        ax.text(direction[0].item(), direction[1].item(), f"{std:.1f}°", color=colours(c % 10), fontsize=7,
                ha="center", va="center", fontweight="bold")
    ax.set_title(f"{name}: mean std {stats['mean_angular_std_deg']:.1f}°, acc {stats['nearest_centre_accuracy']:.2f}",
                 fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.tick_params(labelsize=6)


def main(argv: list[str] | None = None) -> None:
    parser = script_parser("toy_2d", __doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_2d"), help="folder for toy_2d.png/.json")
    parser.add_argument("--heads", default=",".join(HEADS.names()), help="comma-separated head names")
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=200, help="training samples per identity")
    parser.add_argument("--test-samples", type=int, default=60, help="held-out samples per identity (plotted)")
    parser.add_argument("--dim", type=int, default=32, help="dimension of the identities' prototypes")
    parser.add_argument("--noise", type=float, default=1.0, help="within-identity standard deviation")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest at this size)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [name for name in args.heads.split(",") if name]
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    per_identity = args.train_samples + args.test_samples
    x, labels = identities(args.identities, per_identity, args.dim, args.noise, args.seed)
    held_out = (torch.arange(len(labels)) % per_identity) >= args.train_samples
    train_data, test_x, test_y = (x[~held_out], labels[~held_out]), x[held_out], labels[held_out]

    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows), squeeze=False)
    results = {}
    for ax, name in zip(axes.flat, names):
        net, head, loss = train(name, train_data, args.identities, args.steps, args.batch_size, args.lr, args.seed)
        with torch.no_grad():
            features = net(test_x)
        results[name] = {**angular_stats(features, test_y, head), "final_train_loss": loss}
        draw(ax, name, features, test_y, head, results[name])
        print(f"{name}: mean angular std {results[name]['mean_angular_std_deg']:.1f} deg, "
              f"accuracy {results[name]['nearest_centre_accuracy']:.3f} ({time.perf_counter() - start:.0f}s)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"2-D features of held-out samples, {args.identities} synthetic identities, {args.steps} steps "
                 "(number: the class's angular std)", fontsize=10)
    fig.tight_layout()
    png, report = args.out / "toy_2d.png", args.out / "toy_2d.json"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report.write_text(json.dumps({"settings": settings, "heads": results}, indent=2) + "\n")
    print(png, report, f"{time.perf_counter() - start:.0f}s", sep="\n")


if __name__ == "__main__":
    main()
