"""ONNX export of a backbone, checked against PyTorch with onnxruntime.

The model takes ``input`` float32 ``[N,3,112,112]`` (RGB, ``(x/255 - 0.5) / 0.5``) and returns
``embedding`` float32 ``[N, d]``, the raw embedding; ``N`` is a dynamic axis. The export uses
PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no package beyond ``onnx``, exports
every backbone we ship in seconds, and onnxruntime runs its graphs as they are.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facetrain.errors import ModelError
from facetrain.inference_onnx import OnnxBackbone

INPUT_NAME, OUTPUT_NAME = "input", "embedding"
OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |onnx - torch| relative to max |torch|
IMAGE_SIZE = 112


def export_onnx(backbone: nn.Module, path: Path, opset: int = OPSET, image_size: int = IMAGE_SIZE) -> Path:
    """Write ``backbone`` (put in eval mode, on the CPU) to ``path`` with a dynamic batch axis."""
    if isinstance(backbone, OnnxBackbone):
        raise ModelError(f"{backbone.path} is an ONNX model already", "pass a checkpoint or weight file to export")
    backbone = backbone.cpu().eval()
    example = torch.zeros(2, 3, image_size, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notices: chosen on purpose
        torch.onnx.export(backbone, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return path


@dataclass
class Parity:
    """How far onnxruntime's output is from PyTorch's on the same random inputs."""

    max_abs_diff: float
    max_abs_output: float
    batch_sizes: tuple[int, ...]

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.max_abs_output, 1e-30)

    @property
    def ok(self) -> bool:
        return self.relative <= PARITY_TOLERANCE


def check_onnx(backbone: nn.Module, path: Path, batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0,
               image_size: int = IMAGE_SIZE) -> Parity:
    """Run the ONNX model with onnxruntime (CPU) and ``backbone`` on the same uniform [-1, 1] inputs,
    one batch per size (sizes other than the export's prove the dynamic axis)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ModelError(f"the parity check needs {exc.name}, which is not installed",
                         'pip install -e ".[export]" (or pip install onnx onnxruntime)') from None
    onnx.checker.check_model(str(path))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch uses
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    backbone = backbone.cpu().eval()
    max_diff = max_out = 0.0
    for n in batch_sizes:
        inputs = torch.rand(n, 3, image_size, image_size, generator=generator) * 2 - 1
        with torch.inference_mode():
            expected = backbone(inputs).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
        max_out = max(max_out, float(np.abs(expected).max()))
    return Parity(max_diff, max_out, tuple(batch_sizes))
