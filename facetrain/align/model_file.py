"""The models shipped with facetrain (YuNet, MTCNN's ONet), each checked against its recorded SHA-256 before it is loaded."""
from __future__ import annotations

import functools
from pathlib import Path

from facetrain.files import file_sha256
from facetrain.errors import ModelError

MODELS = Path(__file__).resolve().parent / "models"
YUNET_FILE = MODELS / "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"  # the OpenCV Zoo's Git LFS object id
ONET_FILE = MODELS / "mtcnn_onet.safetensors"
ONET_SHA256 = "d40516d24ee2692b53f44a003c4e21bf575b0fb105694f2ce2bdcd7cb561734a"  # MTCNN's ONet (models/README.md)
REINSTALL = "reinstall facetrain (pip install -e .), or pass --detector-model FILE"


@functools.lru_cache(maxsize=None)
def _checked(path: Path, sha256: str, size: int, mtime_ns: int) -> Path:
    found = file_sha256(path)
    if found != sha256:
        raise ModelError(f"detector model {path} has been altered (SHA-256 {found[:12]}..., expected {sha256[:12]}...)",
                         REINSTALL)
    return path


def verified_model(path: Path = YUNET_FILE, sha256: str = YUNET_SHA256) -> Path:
    """``path`` once its SHA-256 is ``sha256`` (checked once per process while the file is unchanged); a
    one-line ModelError if it is missing or altered."""
    try:
        stat = path.stat()
    except OSError:
        raise ModelError(f"detector model {path} is missing", REINSTALL) from None
    return _checked(path, sha256, stat.st_size, stat.st_mtime_ns)
