"""TensorBoard records beyond the per-step scalars: tag names, the resolved config as text, and the
config as hparams with the final metrics (TensorBoard's HPARAMS tab compares runs by them)."""
from __future__ import annotations

from typing import Any, Union

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

LOSS_TAG = "train/loss"
HParam = Union[bool, int, float, str]


def accuracy_tag(target: str, best: bool = False) -> str:
    """The tag of a verification target's accuracy (or of the best accuracy so far)."""
    return f"val/{target}/{'best_accuracy' if best else 'accuracy'}"


def validation_scalars(results: dict[str, dict[str, Any]], best: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each verification target's accuracy and best accuracy by their tags (as ``RunRecord`` writes them)."""
    scalars = {accuracy_tag(target): result["accuracy"] for target, result in results.items()}
    return scalars | {accuracy_tag(target, best=True): best[target]["accuracy"] for target in results if target in best}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, HParam]:
    """``{"a.b": value}`` for every leaf of a nested config; lists and null become text."""
    flat: dict[str, HParam] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def write_config(writer: SummaryWriter, config: dict[str, Any], step: int) -> None:
    """The resolved config as YAML under TEXT (indented, so Markdown shows it verbatim)."""
    yaml = OmegaConf.to_yaml(OmegaConf.create(config))
    writer.add_text("config", "".join(f"    {line}\n" for line in yaml.splitlines()), step)


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers a finished run is compared by, from :meth:`Trainer.metrics`: its last training loss
    and each verification target's last and best accuracy."""
    final = {"hparams/train_loss": metrics["train_loss"]} if metrics["train_loss"] is not None else {}
    for target, result in metrics["val"].items():
        final[f"hparams/{target}/accuracy"] = result["accuracy"]
    for target, best in metrics["best"].items():
        final[f"hparams/{target}/best_accuracy"] = best["accuracy"]
    return final


def write_hparams(writer: SummaryWriter, config: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """The flattened config as hparams of this run (in its own event file, not a sub-run as
    ``SummaryWriter.add_hparams`` makes), with ``metrics`` as its scalars at ``step``."""
    for summary in hparams(flatten(config), metrics):
        writer.file_writer.add_summary(summary, step)
    for name, value in metrics.items():
        writer.add_scalar(name, value, step)


def write_gpu_memory(writer: SummaryWriter, device: torch.device, step: int) -> None:
    """Peak and reserved GPU memory of this process since the last call, in GiB (nothing on a CPU)."""
    if device.type != "cuda":
        return
    writer.add_scalar("system/gpu_memory_peak_gib", torch.cuda.max_memory_allocated(device) / 2**30, step)
    writer.add_scalar("system/gpu_memory_reserved_gib", torch.cuda.memory_reserved(device) / 2**30, step)
    torch.cuda.reset_peak_memory_stats(device)
