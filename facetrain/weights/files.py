"""Reading weight files as data: facetrain checkpoints and run directories, arcface_torch's ``backbone.pth``,
AdaFace's Lightning ``.ckpt``, torchvision's ImageNet files and ``.safetensors``; never running their code."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from facetrain.files import atomic_write
from facetrain.errors import FacetrainError, ModelError
from facetrain.untrusted import load_torch_file

HOLDS = "a weight file holds only tensors and plain values"
METADATA_KEY = "facetrain"  # safetensors metadata: the backbone config of a facetrain export
TORCH, SAFETENSORS = "torch", "safetensors"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch's legacy format: a pickle of this number first
READ_AGAIN = "the file is truncated or not a weight file; download or copy it again"


# The globals a Lightning checkpoint's hyperparameters may name (its AttributeDict, read as the plain dict it
# subclasses; argparse's Namespace, an attribute bag): a file is read with exactly these allowed, never with
# full pickle, and Lightning need not be installed.
LIGHTNING_GLOBALS = [(dict, name) for name in (
    "pytorch_lightning.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict")] + [argparse.Namespace]


@dataclass
class WeightFile:
    """The tensors of a file, and what it says about itself: a facetrain ``config`` (checkpoints and
    facetrain exports), whether it came wrapped in a Lightning checkpoint."""

    path: Path
    state: dict[str, torch.Tensor]
    config: Optional[dict[str, Any]] = None
    lightning: bool = False
    channel_order: Optional[str] = None


def file_format(path: Path) -> str:
    """``torch`` or ``safetensors``, told by the file's first bytes (not its name); a one-line ModelError for
    anything else (an empty file, text, random bytes)."""
    with open(path, "rb") as f:
        head = f.read(32)
    size = path.stat().st_size
    if head.startswith(ZIP_MAGIC) or (head[:1] == b"\x80" and LEGACY_MAGIC in head):
        return TORCH
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return SAFETENSORS
    what = "it is empty" if not head else f"it starts with {head[:16]!r}"
    raise ModelError(f"{path} is neither a torch file nor a safetensors file ({what})", READ_AGAIN)


def read_weight_file(path: Path) -> WeightFile:
    """The weights in ``path`` (a file, or a facetrain run directory: its newest checkpoint)."""
    from facetrain.runs.run_dir import find_checkpoint

    path = find_checkpoint(path)
    if file_format(path) == SAFETENSORS:
        return _read_safetensors(path)
    try:
        content = load_torch_file(path, HOLDS, LIGHTNING_GLOBALS, mmap=False)
    except FacetrainError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch's reader raises many kinds for a damaged file
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise ModelError(f"{path} is unreadable ({type(exc).__name__}: {first})", READ_AGAIN) from None
    if isinstance(content, dict) and "backbone" in content and "config" in content:
        return checkpoint_weights(path, content)
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):  # Lightning: the model's part
        state = {key: value for key, value in content["state_dict"].items() if key.startswith("model.")}
        return WeightFile(path, _tensors(path, state or content["state_dict"]), lightning=True)
    return WeightFile(path, _tensors(path, content))


def checkpoint_weights(path: Path, content: Any) -> WeightFile:
    """The backbone of a facetrain checkpoint's ``content`` (as :func:`facetrain.runs.checkpoint.load_checkpoint`
    returns it), with its config and input convention."""
    if not isinstance(content, dict) or "backbone" not in content or "config" not in content:
        raise ModelError(f"{path} is not a facetrain checkpoint (it has no 'backbone' and 'config')",
                         "pass a checkpoint written by train.py or import_weights.py")
    convention = content.get("input")
    return WeightFile(path, _tensors(path, content["backbone"]), content["config"],
                      channel_order=convention.get("channel_order") if isinstance(convention, dict) else None)


def _tensors(path: Path, state: Any) -> dict[str, torch.Tensor]:
    """``state`` if it is a non-empty dict of tensors, each holding values of its own in the file."""
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        kind = type(state).__name__ if not isinstance(state, dict) else "dict of non-tensors" if state else "empty dict"
        raise ModelError(f"{path} is not a state dict (it holds a {kind})",
                         "pass a backbone's state dict, a Lightning checkpoint or a facetrain checkpoint")
    require_stored(path, state)
    return state


def require_stored(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse tensors that hold more values than the file stores for them (a zero stride repeats one stored
    value over any shape; overlapping views share theirs): building a network for such shapes would take
    memory the file never held."""
    stored: dict[tuple[int, int], int] = {}
    for key, tensor in state.items():
        storage = tensor.untyped_storage()
        stored[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        if tensor.numel() * tensor.element_size() > storage.nbytes():
            raise ModelError(f"{path}: tensor {key} of shape {tuple(tensor.shape)} repeats the {storage.nbytes()} "
                             "bytes the file stores for it", "the file was crafted or damaged; use the original")
    held = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    if held > sum(stored.values()):
        raise ModelError(f"{path}: its tensors share stored values ({held} bytes in tensors, "
                         f"{sum(stored.values())} stored)", "the file was crafted or damaged; use the original")


def _read_safetensors(path: Path) -> WeightFile:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path} is unreadable ({exc})", "the file is truncated or not a safetensors file") from None
    try:
        info = json.loads(metadata.get(METADATA_KEY, "{}"))
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise ModelError(f"{path}: its '{METADATA_KEY}' metadata is not a JSON object", READ_AGAIN)
    return WeightFile(path, _tensors(path, state), info.get("config"), channel_order=info.get("channel_order"))


def write_safetensors(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any], channel_order: str) -> Path:
    """``state`` as a safetensors file whose metadata names the facetrain backbone config (a file that can
    hold no code, which facetrain and any safetensors reader load)."""
    from safetensors.torch import save

    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    info = json.dumps({"config": config, "channel_order": channel_order})
    with atomic_write(path) as f:  # readable by all, like every other file facetrain writes
        f.write(save(tensors, metadata={METADATA_KEY: info}))
    return path
