"""What fine-tuning buys (docs/weights.md, block ``finetune``, and ``finetune_synthetic.png``): the quick start's
backbone fine-tuned on 100 other synthetic identities of 5 images each, against training from scratch,
each over several seeds, reported as mean and spread."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from facetrain.docs_figures.runs import (QUICK_DATA, mean_std, points, seed_curves, sweep_config,  # noqa: E402
                                         sweep_runs, train, verdict)
from facetrain.sweeps.compare import Run  # noqa: E402

# the small set: 100 identities other than the pretraining ones, 5 images each; epochs of 7 steps
DATA = ("dataset.seed=1", "dataset.num_classes=100", "dataset.images_per_class=5", "trainer.batch_size=64",
        "eval.every_steps=7")
RECIPE_EPOCHS = 10  # experiment=finetune's trainer.max_epochs
QUICK = ("dataset.seed=1", *QUICK_DATA, "trainer.max_steps=2", "eval.every_steps=2")
# job folders named after the head's start and the seed (after all the overrides, the default, they exceed 255
# characters)
SHORT_JOB_NAMES = "hydra.sweep.subdir=${init.head}_seed_${seed}"
SWEEPS = {"scratch": (), "finetune": ("experiment=finetune", "init.backbone=pretrained", "init.head=random,class_mean")}
KINDS = {  # name -> (row label, its sweep, the override that picks its jobs there; None: all)
    "scratch": ("(a) from scratch, the default recipe (lr 0.1, poly)", "scratch", None),
    "random_head": ("(b) `experiment=finetune init.head=random`", "finetune", "init.head=random"),
    "class_mean_head": ("(c) `experiment=finetune` (class-mean head)", "finetune", "init.head=class_mean"),
}


@dataclass
class Kind:
    label: str
    runs: list[Run]  # one per seed

    def values(self, what: str) -> list[float]:
        """Per seed: ``start`` (accuracy at step 0), ``final``, ``best`` accuracy, ``first_loss`` (step 1),
        ``final_loss``."""
        read = {"start": lambda run: run.curves[run.targets[0]][0][1],
                "final": lambda run: run.metrics["val"][run.targets[0]]["accuracy"],
                "best": lambda run: run.metrics["best"][run.targets[0]]["accuracy"],
                "first_loss": lambda run: run.curves["loss"][0][1],
                "final_loss": lambda run: run.metrics["train_loss"]}[what]
        return [read(run) for run in self.runs]

    def gains(self) -> list[float]:
        """Per seed: final accuracy minus the accuracy at step 0."""
        return [final - start for final, start in zip(self.values("final"), self.values("start"))]


@dataclass
class Finetune:
    kinds: dict[str, Kind]
    seeds: list[int]
    overrides: tuple[str, ...]
    steps: int
    pairs: int
    classes: int
    images_per_class: int
    epochs: int | None  # None: --quick's steps


def measure(work: Path, pretrained: Path, seeds: list[int], quick: bool, epochs: int = RECIPE_EPOCHS) -> Finetune:
    """Fine-tune from ``pretrained`` (a run directory) and train from scratch for ``epochs``, one sweep per kind
    over ``seeds``; the runs log every step's loss."""
    (work / "pretrained").symlink_to(pretrained.resolve(), target_is_directory=True)  # a short name in job folders
    overrides = QUICK if quick else (*DATA, f"trainer.max_epochs={epochs}")
    seeds_override = "seed=" + ",".join(map(str, seeds))
    for sweep, extra in SWEEPS.items():
        train(work, f"finetune_{sweep}", [*extra, *overrides, "trainer.log_every=1", f"sweep.name={sweep}",
                                          seeds_override, SHORT_JOB_NAMES], multirun=True)
    runs = {sweep: sweep_runs(work, sweep) for sweep in SWEEPS}
    kinds = {name: Kind(label, [run for run in runs[sweep] if pick is None or pick in run.label.split()])
             for name, (label, sweep, pick) in KINDS.items()}
    data = sweep_config(work, "scratch").dataset
    return Finetune(kinds, seeds, overrides, kinds["scratch"].runs[0].metrics["step"], data.val_pairs,
                    data.num_classes, data.images_per_class, None if quick else epochs)


def _shortened(epochs: int | None) -> str:
    """What the runs' length says about the recipe's."""
    if epochs is None or epochs == RECIPE_EPOCHS:
        return ""
    return (f" ({epochs} epochs, where `experiment=finetune` trains {RECIPE_EPOCHS}: cut to fit the time of the "
            "machine that measured it, so the gains below may be smaller than the recipe's)")


def _spread(values: list[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} +- {std:.{digits}f}"


def block(figures: Finetune, stamp: str, pretrained: str) -> str:
    """The block; ``pretrained`` says in a few words what the starting backbone was trained on."""
    f, kinds = figures, figures.kinds
    seeds = ", ".join(map(str, f.seeds))
    rows = [f"| {kind.label} | {_spread(kind.values('start'))} | {_spread(kind.values('final'))} | "
            f"{' / '.join(f'{v:.3f}' for v in kind.values('final'))} | {_spread(kind.values('best'))} | "
            f"{_spread(kind.values('first_loss'), 1)} | {_spread(kind.values('final_loss'), 2)} |"
            for kind in kinds.values()]
    alone = kinds["class_mean_head"].values("start")[0]
    over_scratch = [tuned - scratch for name in ("random_head", "class_mean_head")
                    for tuned, scratch in zip(kinds[name].values("final"), kinds["scratch"].values("final"))]
    heads = [mean - random for mean, random in zip(kinds["class_mean_head"].values("final"),
                                                   kinds["random_head"].values("final"))]
    lines = [
        f"{stamp}; each run with seeds {seeds} (`seed=`: the new head's start, the order and flips of the "
        f"images), mean +- standard deviation over the seeds. Pretrained: the quick start's MobileFaceNet "
        f"({pretrained}). Fine-tuned on {f.classes} *other* synthetic identities (`dataset.seed=1`) with "
        f"{f.images_per_class} images each, {f.steps} steps{_shortened(f.epochs)}, verification on "
        f"{f.pairs:,} pairs of held-out identities (`{' '.join(f.overrides)}`):",
        "",
        f"| run | accuracy at step 0 | final (step {f.steps}) | final, per seed | best | loss at step 1 | "
        "final training loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "![training loss and verification accuracy of the three runs, mean over the seeds, the band from the "
        "lowest to the highest seed](finetune_synthetic.png)",
        "",
        f"Differences are per seed, in points (hundredths), mean +- standard deviation over the seeds. The "
        f"pretrained backbone is worth {points(over_scratch)} points of final accuracy over training from "
        f"scratch on the small set (each fine-tuned run against the scratch run of its seed). Over the "
        f"pretrained backbone alone ({alone:.3f} at step 0), fine-tuning changed the accuracy by "
        f"{points(kinds['random_head'].gains())} points with a random head ({verdict(kinds['random_head'].gains())}) "
        f"and {points(kinds['class_mean_head'].gains())} with the class-mean head "
        f"({verdict(kinds['class_mean_head'].gains())}); the class-mean head against the random one, seed by seed: "
        f"{points(heads)} ({verdict(heads)}). The class-mean head starts the training loss at "
        f"{_spread(kinds['class_mean_head'].values('first_loss'), 1)} instead of "
        f"{_spread(kinds['random_head'].values('first_loss'), 1)} (a random head at ArcFace's margin).",
    ]
    return "\n".join(lines) + "\n"


def picture(figures: Finetune, path: Path) -> Path:
    """Training loss and accuracy against the step, per kind: the mean over the seeds and the band from the
    lowest to the highest seed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, kind in enumerate(figures.kinds.values()):
        for ax, key in zip(axes, ("loss", None)):
            steps, values = seed_curves(kind.runs, key or kind.runs[0].targets[0])
            colour = plt.get_cmap("tab10")(i)
            ax.plot(steps, values.mean(axis=0), color=colour, label=kind.label.replace("`", ""))
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.2, lw=0)
    axes[0].set(xlabel="step", ylabel="training loss", title="training loss")
    axes[1].set(xlabel="step", ylabel="verification accuracy", title=f"accuracy on {figures.pairs:,} pairs")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
