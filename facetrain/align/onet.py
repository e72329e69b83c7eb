"""Five points placed by MTCNN's output network (ONet) on the faces another detector found.

YuNet finds faces fast, but its five points scatter: against 5,832 human-annotated faces its mean point error
is about 0.10 of the eye distance, twice MTCNN's (BENCHMARKS.md, "Alignment"). ONet, the last stage of MTCNN
(Zhang et al., "Joint Face Detection and Alignment Using Multitask Cascaded Convolutional Networks", IEEE
SPL 2016), regresses the five points from a 48x48 view of a face box; given YuNet's box it places them a
little closer to the annotations than MTCNN itself does, for about 2 ms of one core per face. Its weights
ship beside YuNet's (MIT, sha256 checked).

The view is the square of side ``VIEW_SCALE`` times the box's longer side, centred on the box, cut from the
photo at full resolution (black outside it) and area-resized to 48x48; pixels go in as RGB scaled to
[-1, 1) as MTCNN feeds them; the points come out as fractions of the square.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from facetrain.align.faces import Face
from facetrain.align.model_file import ONET_FILE, ONET_SHA256, verified_model

VIEW_SIZE = 48
# the square's side over the box's longer side: YuNet's boxes are a little larger than the boxes MTCNN hands
# to ONet; 0.9 was chosen on 1,000 annotated faces and checked on 4,833 others (BENCHMARKS.md, "Alignment")
VIEW_SCALE = 0.9


class ONet(nn.Module):
    """MTCNN's output network: 48x48 RGB -> (face probability [N, 2], box offsets [N, 4], points [N, 10]
    as x0..x4 then y0..y4, fractions of the input square). Layer names are those of its weight file."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = nn.functional.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = nn.functional.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = nn.functional.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        # the weights were trained on transposed images (Caffe, from MATLAB): flatten as (width, height, channel)
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_1(x).softmax(dim=1), self.dense6_2(x), self.dense6_3(x)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for a moment: split over threads on a busy machine, a network this small took
    tens of times the CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def shipped_onet() -> ONet:
    """The shipped ONet in eval mode (its weight file checked against its SHA-256 first)."""
    from safetensors.torch import load_file

    net = ONet()
    net.load_state_dict(load_file(str(verified_model(ONET_FILE, ONET_SHA256))))
    return net.eval()


def view_square(box: np.ndarray) -> tuple[int, int, int]:
    """``(x0, y0, side)`` in whole pixels: the square ONet looks at for a face box ``[x1, y1, x2, y2]``."""
    box = box.astype(np.float64)
    centre = (box[:2] + box[2:]) / 2
    side = max(1, int(round(VIEW_SCALE * float(max(box[2] - box[0], box[3] - box[1])))))
    x0, y0 = (int(np.floor(c - side / 2)) for c in centre)
    return x0, y0, side


def view(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The ``side``-pixel square at ``(x0, y0)`` of ``image`` (black outside it), area-resized to 48x48."""
    height, width = image.shape[:2]
    square = np.zeros((side, side, 3), np.uint8)
    left, top, right, bottom = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    if left < right and top < bottom:
        square[top - y0:bottom - y0, left - x0:right - x0] = image[top:bottom, left:right]
    return cv2.resize(square, (VIEW_SIZE, VIEW_SIZE), interpolation=cv2.INTER_AREA)


def refine_points(image: np.ndarray, faces: Sequence[Face], net: ONet | None = None) -> list[Face]:
    """``faces`` of the RGB uint8 ``image`` with their five points placed by ONet (boxes and scores kept)."""
    if not faces:
        return []
    squares = [view_square(face.box) for face in faces]
    views = np.stack([view(image, *square) for square in squares]).astype(np.float32)
    batch = torch.from_numpy((views - 127.5) * 0.0078125).permute(0, 3, 1, 2)
    with torch.inference_mode(), one_thread():
        fractions = (net or shipped_onet())(batch)[2].double().numpy().reshape(-1, 2, 5).transpose(0, 2, 1)
    origins = np.array([square[:2] for square in squares], np.float64)[:, None, :]
    sides = np.array([square[2] for square in squares], np.float64)[:, None, None]
    points = (origins + fractions * sides).astype(np.float32)
    return [Face(face.box, face_points, face.score) for face, face_points in zip(faces, points)]
