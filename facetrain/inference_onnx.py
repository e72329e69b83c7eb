"""ONNX recognition models as backbones: insightface's model packs (``w600k_r50.onnx``, ``glintr100.onnx``, ...)
and facetrain's own exports, run with onnxruntime wherever a checkpoint's backbone is used.

:class:`OnnxBackbone` takes facetrain's input (RGB ``[N,3,112,112]``, ``(x/255 - 0.5) / 0.5``) and converts it to
the model's own convention inside. The convention is read from the model as insightface's ``ArcFaceONNX`` reads
it: RGB channels (insightface feeds ``cv2.dnn.blobFromImages(..., swapRB=True)``), and pixels ``(x - 127.5) /
127.5`` unless one of the graph's first eight nodes is named ``Sub``/``_minus...`` and one ``Mul``/``_mul...``
(models converted from MXNet, which normalise inside): those get raw pixel values 0..255. facetrain's exports
(:mod:`facetrain.export`) take exactly facetrain's input, so they pass through unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from facetrain.errors import ModelError

IMAGE_SIZE = 112
FIRST_NODES = 8  # how many of the graph's first nodes insightface looks at for in-graph normalisation
PIXEL_MEAN = PIXEL_STD = 127.5  # facetrain's (x/255 - 0.5)/0.5 written in pixels
# ModelProto tags an ONNX writer may put after ir_version (field 1): fields 2-8, 14 and 20, wire types 0 or 2
NEXT_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2})
NOT_RECOGNITION = "pass a face recognition model: one input [N,3,112,112], one output [N,d]"


def looks_like_onnx(path: Path) -> bool:
    """Whether ``path`` starts as an ONNX ModelProto does: ir_version (a small varint), then another field (and not
    as a safetensors file whose header length happens to start alike: its JSON header opens at byte 8)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return (len(head) == 9 and head[0] == 0x08 and 1 <= head[1] <= 64 and head[2] in NEXT_TAGS
            and head[8:9] != b"{")


def normalises_inside(node_names: list[str]) -> bool:
    """insightface's rule: a Sub and a Mul among the first nodes mean the model takes raw pixels."""
    first = node_names[:FIRST_NODES]
    return (any(n.startswith(("Sub", "_minus")) for n in first) and any(n.startswith(("Mul", "_mul")) for n in first))


class OnnxBackbone(nn.Module):
    """An onnxruntime session behind a backbone's interface: ``forward(x) -> [N, d]`` float32 raw embeddings on
    ``x``'s device, for facetrain-normalised RGB ``x``. It has no parameters and never computes a gradient."""

    def __init__(self, session: "onnxruntime.InferenceSession", pixel_mean: float, pixel_std: float,  # noqa: F821
                 fixed_batch: Optional[int], path: Path) -> None:
        super().__init__()
        self.session, self.path, self.fixed_batch = session, path, fixed_batch
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def model_input(self, x: torch.Tensor) -> np.ndarray:
        """``x`` in the model's convention, as a contiguous float32 array."""
        x = x.detach().float().cpu()
        if (self.pixel_mean, self.pixel_std) != (PIXEL_MEAN, PIXEL_STD):
            x = (x * PIXEL_STD + PIXEL_MEAN - self.pixel_mean) / self.pixel_std
        return np.ascontiguousarray(x.numpy(), dtype=np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blob = self.model_input(x)
        step = self.fixed_batch or max(len(blob), 1)
        parts = [self.session.run([self.output_name], {self.input_name: blob[i:i + step]})[0]
                 for i in range(0, len(blob), step)]
        out = np.concatenate(parts) if parts else np.empty((0, 0), np.float32)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.path.name}, pixels (x - {self.pixel_mean}) / {self.pixel_std}"


def _fixed(dim: object) -> Optional[int]:
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_shapes(path: Path, session: "onnxruntime.InferenceSession") -> Optional[int]:  # noqa: F821
    """The model's fixed batch size (None when dynamic); a one-line ModelError unless it maps one image batch
    ``[N,3,112,112]`` float to one embedding batch ``[N,d]``."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs, not one of each",
                         NOT_RECOGNITION)
    shape, kind = inputs[0].shape, inputs[0].type
    sizes = [_fixed(d) for d in shape[2:]] if len(shape) == 4 else []
    if kind != "tensor(float)" or len(shape) != 4 or _fixed(shape[1]) != 3 or any(s not in (None, IMAGE_SIZE) for s in sizes):
        raise ModelError(f"{path} takes {kind} {list(shape)}, not float [N,3,{IMAGE_SIZE},{IMAGE_SIZE}] images",
                         NOT_RECOGNITION)
    if len(outputs[0].shape) != 2:
        raise ModelError(f"{path} returns {list(outputs[0].shape)}, not embeddings [N,d]", NOT_RECOGNITION)
    return _fixed(shape[0])


def load_onnx_backbone(path: str | os.PathLike, device: torch.device | str = "cpu") -> OnnxBackbone:
    """The ONNX recognition model in ``path`` as an :class:`OnnxBackbone`, run by onnxruntime on ``device``
    (CUDA when asked and onnxruntime has it, else the CPU). The file is data: parsing it runs no code; weights
    kept in separate files are refused (they would be read from paths the file names)."""
    try:
        import onnx
        import onnxruntime
        from onnx.external_data_helper import uses_external_data
    except ImportError as exc:
        raise ModelError(f"{path} is an ONNX model and running it needs {exc.name}, which is not installed",
                         'pip install -e ".[export]" (or pip install onnx onnxruntime)') from None
    path = Path(path)
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
        if any(uses_external_data(tensor) for tensor in model.graph.initializer):
            raise ModelError(f"{path} keeps its weights in separate files",
                             "save it as one file: onnx.save(onnx.load(path), 'one.onnx')")
        session = _session(onnxruntime, data, torch.device(device))
    except ModelError:
        raise
    except Exception as exc:  # protobuf's and onnxruntime's errors have no common base
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path} is not a readable ONNX model ({first})",
                         "download or export the model again") from None
    fixed_batch = _check_shapes(path, session)
    mean, std = (0.0, 1.0) if normalises_inside([n.name for n in model.graph.node]) else (PIXEL_MEAN, PIXEL_STD)
    return OnnxBackbone(session, mean, std, fixed_batch, path).eval()


def _session(onnxruntime: object, data: bytes, device: torch.device) -> "onnxruntime.InferenceSession":  # noqa: F821
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch uses
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    return onnxruntime.InferenceSession(data, options, providers=providers)
