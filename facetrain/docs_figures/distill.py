"""What distillation buys (README.md, block ``distill``, with ``docs/distillation.png``): an IResNet-18 teacher
trained on the synthetic identities, then a small MobileFaceNet student trained on the same data without a teacher
and with each distillation loss, same config, steps and seeds."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from facetrain.docs_figures.runs import (QUICK_DATA, established, mean_std, only_run, points, run_config,  # noqa: E402
                                         script, seed_curves, train, verdict)
from facetrain.sweeps.compare import Run, load_run  # noqa: E402

TEACHER = ("backbone=r18", "trainer.batch_size=64", "trainer.max_steps=250", "eval.every_steps=50",
           "trainer.log_every=10")
# the student of docs/noisy_data.md, its embedding 128-d (the teacher's is 512-d: feature and mse learn a projection);
# no flip, so the teacher's features extracted once are exactly what the teacher would say of each batch
SMALL_MBF = ("backbone=mbf", "backbone.blocks=[1,1,1,1]", "embedding_size=128", "trainer.hflip=0")
STUDENT = (*SMALL_MBF, "trainer.batch_size=32", "trainer.max_steps=300", "eval.every_steps=50", "trainer.log_every=10")
QUICK = (*QUICK_DATA, "trainer.max_steps=2", "eval.every_steps=2")
LOSSES = ("none", "feature", "mse", "kl", "rkd", "ekd")
NEEDS_HEAD = {"kl"}  # compares logits: the teacher runs beside the student (its checkpoint), not from features


def images_per_s(run: Run) -> float:
    """The median of the run's logged intervals' throughput."""
    return statistics.median(value for _, value in run.scalars["train/throughput"])


@dataclass
class Student:
    loss: str
    runs: list[Run]  # one per seed

    def final(self) -> list[float]:
        return [run.metrics["val"][run.targets[0]]["accuracy"] for run in self.runs]

    def spread(self) -> float:
        """The standard deviation of the final accuracy over the seeds, or over the 10 folds of the one seed."""
        run = self.runs[0]
        return mean_std(self.final())[1] if len(self.runs) > 1 else run.metrics["val"][run.targets[0]]["std"]

    def images_per_s(self) -> float:
        """The mean over the seeds of :func:`images_per_s`."""
        return statistics.fmean(images_per_s(run) for run in self.runs)


@dataclass
class Distillation:
    teacher: Run
    teacher_overrides: tuple[str, ...]
    student_overrides: tuple[str, ...]
    students: dict[str, Student]
    seeds: list[int]
    steps: int
    pairs: int
    classes: int
    images_per_class: int
    batch_size: int  # the students'


def _overrides(run_dir: Path) -> tuple[str, ...]:
    """The command-line overrides a run was started with (Hydra's ``.hydra/overrides.yaml``)."""
    return tuple(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))


def measure(work: Path, seeds: list[int], quick: bool, teacher: Optional[Path] = None) -> Distillation:
    """Train the teacher (unless ``teacher``, a run directory, is given), then a student per loss and seed; the
    teacher's features of the training set are extracted once, after the first run has generated the data.
    ``quick``: a few steps on a tiny set."""
    data = work / "synthetic"  # every student's dataset.root: the folder extract_features reads
    if teacher is None:
        train(work, "distill_teacher", [*(("backbone=r18", *QUICK) if quick else TEACHER), f"dataset.root={data}",
                                        "name=distill_teacher"])
        teacher = only_run(work, "distill_teacher")
    features = work / "teacher.npy"
    for loss in LOSSES:
        for seed in seeds:
            if loss != "none" and loss not in NEEDS_HEAD and not features.exists():
                script(work, "extract_features", "scripts/extract_features.py",
                       [str(teacher), "--dataset", str(data), "--output", str(features), "--flip", "none",
                        "--no-progress", "--workers", "1"])
            source = [] if loss == "none" else [f"distill.teacher={teacher if loss in NEEDS_HEAD else features}"]
            train(work, _name(loss, seed), [*((*SMALL_MBF, *QUICK) if quick else STUDENT), f"dataset.root={data}",
                                            f"distill={loss}", *source, f"seed={seed}", f"name={_name(loss, seed)}"])
    return read(work, seeds, teacher)


def _name(loss: str, seed: int) -> str:
    return f"distill_{loss}_seed{seed}"


def read(work: Path, seeds: list[int], teacher: Path) -> Distillation:
    """The figures of the teacher's run and of the students :func:`measure` trained in ``work``."""
    students = {}
    for loss in LOSSES:
        students[loss] = Student(loss, [load_run(only_run(work, _name(loss, seed)), loss) for seed in seeds])
    first = only_run(work, _name("none", seeds[0]))
    config = run_config(first)
    return Distillation(load_run(teacher, "teacher"), _overrides(teacher), _overrides(first),
                        students, seeds, students["none"].runs[0].metrics["step"], config.dataset.val_pairs,
                        config.dataset.num_classes, config.dataset.images_per_class, config.trainer.batch_size)


def _final(student: Student) -> str:
    """Mean +- the spread: over the seeds, or over the 10 folds of the one seed."""
    return f"{statistics.fmean(student.final()):.3f} +- {student.spread():.3f}"


def _overrides_text(overrides: tuple[str, ...]) -> str:
    """The overrides that shape the run (not where it writes or reads, its console, or what the table varies)."""
    where = ("dataset.root=", "name=", "output_root=", "trainer.progress_bar=", "distill=", "seed=")
    return " ".join(o for o in overrides if not o.startswith(where))


def _change(gains: list[float]) -> str:
    """The change over ``distill=none`` and whether the seeds establish it."""
    if len(gains) == 1:
        return f"{points(gains)} | -"
    return f"{points(gains)} | {'yes' if established(gains) else 'no'}"


def block(figures: Distillation, stamp: str) -> str:
    """The README's table and the words around it."""
    f, none = figures, figures.students["none"]
    teacher_accuracy = f.teacher.metrics["val"][f.teacher.targets[0]]
    spread = "standard deviation over the seeds" if len(f.seeds) > 1 else "standard deviation over the 10 folds"
    rows, gains = [], {}
    for loss, student in f.students.items():
        source = "-" if loss == "none" else "checkpoint" if loss in NEEDS_HEAD else "features (.npy)"
        if loss != "none":
            gains[loss] = [a - b for a, b in zip(student.final(), none.final())]
        rows.append(f"| `distill={loss}` | {source} | {_final(student)} | "
                    f"{' / '.join(f'{v:.3f}' for v in student.final())} | "
                    f"{_change(gains[loss]) if loss in gains else ' | '} | "
                    f"{student.images_per_s():.0f} |")
    best = max(gains, key=lambda loss: statistics.fmean(gains[loss]))
    summary = (f"The largest mean change is `distill={best}`'s ({points(gains[best])} points, "
               f"{verdict(gains[best])})" if statistics.fmean(gains[best]) > 0
               else "No loss raised the mean accuracy over `distill=none`")
    lines = [
        f"{stamp}. Teacher: trained here on the {f.classes} synthetic identities x {f.images_per_class} images "
        f"(`{_overrides_text(f.teacher_overrides)}`, {f.teacher.metrics['step']} steps, "
        f"{images_per_s(f.teacher):.1f} images/s): {teacher_accuracy['accuracy']:.3f} +- "
        f"{teacher_accuracy['std']:.3f} on {f.pairs:,} verification pairs of held-out identities. Student: "
        f"MobileFaceNet with one block a stage and a 128-d embedding (the teacher's is 512-d: `feature` and `mse` "
        f"learn the projection), ArcFace, `{_overrides_text(f.student_overrides)}`, "
        f"seed{'s' if len(f.seeds) > 1 else ''} {', '.join(map(str, f.seeds))}; every row the same config, steps "
        f"and seeds, only `distill=` differs (each loss's defaults, weight 1). Accuracy at step {f.steps}, mean +- "
        f"{spread}; the change is over `distill=none` in points, seed by seed, and established where its mean "
        f"lies more than two standard errors from 0; images/s of the whole training step (teacher included):",
        "",
        f"| student | teacher from | accuracy at step {f.steps} | per seed | change (points) | established | "
        "images/s |",
        "|---|---|---:|---:|---:|---|---:|",
        *rows,
        "",
        "![verification accuracy of the students against the step, and the teacher's](docs/distillation.png)",
        "",
        f"`feature`, `mse`, `rkd` and `ekd` read the teacher's features extracted once "
        f"(`scripts/extract_features.py --dataset`): with no flip and no augmentation they are the teacher's output "
        f"for the very batch. `kl` needs the teacher's head and runs its checkpoint beside the student, hence its "
        f"cost. {summary}. Every row draws its batches with the default `trainer.sampler=random` ({f.batch_size} images "
        f"of {f.classes} identities: a few positive pairs a batch), where TFace trains EKD with "
        f"`trainer.sampler=mixed` (`experiment=ms1mv3_mbf_ekd`). Minutes of CPU training on synthetic faces show "
        f"the mechanics and the relative cost, not what each loss is worth on MS1Mv3 (TFace's figures in "
        f"[Distillation](docs/distillation.md)).",
    ]
    return "\n".join(lines) + "\n"


def picture(figures: Distillation, path: Path) -> Path:
    """Each student's accuracy against the step (mean over the seeds) with the teacher's final accuracy, and
    each student's final accuracy with its spread."""
    fig, (curves, finals) = plt.subplots(1, 2, figsize=(11, 4))
    target = figures.teacher.targets[0]
    for i, (loss, student) in enumerate(figures.students.items()):
        steps, values = seed_curves(student.runs, target)
        colour = plt.get_cmap("tab10")(i)
        curves.plot(steps, values.mean(axis=0), color=colour, label=loss)
        finals.errorbar(i, statistics.fmean(student.final()), yerr=student.spread(), color=colour, marker="o",
                        capsize=4)
    teacher = figures.teacher.metrics["val"][target]["accuracy"]
    for ax in (curves, finals):
        ax.axhline(teacher, color="black", linestyle="--", linewidth=1, label="teacher")
    curves.set(xlabel="step", ylabel="verification accuracy", title=f"students on {figures.pairs:,} pairs")
    curves.legend(fontsize=8, loc="lower right")
    finals.set_xticks(range(len(figures.students)), [f"distill={loss}" for loss in figures.students], rotation=20,
                      fontsize=8)
    finals.set(ylabel="accuracy", title=f"at step {figures.steps} (bars: the spread)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
