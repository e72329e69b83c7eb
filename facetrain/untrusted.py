"""Files from strangers are data: loading a verification ``.bin``, a checkpoint or released weights never
runs code.

Pickle can call any importable function while it loads (``os.system`` included). Every pickle facetrain
reads goes through an allowlist instead: :func:`load_data_pickle` for insightface's ``.bin`` sets (lists
and tuples of bytes, bools, and uint8/bool numpy arrays), :func:`load_torch_file` for ``.pt``/``.pth``
files (torch's ``weights_only`` loader: tensors and plain values, plus exactly the globals a caller names).
Anything else is refused with one line naming the file and the global it would have imported.

A user who trusts a file that needs more lists it in ``FACETRAIN_TRUST_PICKLES`` (paths separated by
``:``); such a file is loaded with plain pickle, with a warning naming it.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from facetrain.errors import FacetrainError

TRUST_ENV = "FACETRAIN_TRUST_PICKLES"

log = logging.getLogger("facetrain")


class UnsafeFileError(FacetrainError):
    """A file would run code (import a global outside the allowlist) if it were loaded."""


def refuse(path: Path, global_name: str, holds: str) -> UnsafeFileError:
    return UnsafeFileError(f"{path} refused: it would import {global_name}; {holds}",
                           f"if you made it or trust its source, {TRUST_ENV}={path} loads it with full pickle "
                           "(which can run code)")


def is_trusted(path: Path) -> bool:
    """Whether ``path`` is listed in ``FACETRAIN_TRUST_PICKLES``; logs a warning when it is."""
    listed = [Path(entry).resolve() for entry in os.environ.get(TRUST_ENV, "").split(os.pathsep) if entry]
    if Path(path).resolve() not in listed:
        return False
    log.warning(f"warning: {path} is listed in {TRUST_ENV}: loading it with full pickle, which can run code")
    return True


# ---- insightface .bin sets --------------------------------------------------------------------------
def _numpy_core(name: str) -> Any:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    return getattr(getattr(core, "multiarray" if name in ("_reconstruct", "scalar") else "numeric"), name)


_PLAIN_KINDS = "biuf"  # bool, signed and unsigned integers, floats: no objects, no structured records


def _plain_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None:
        raise pickle.UnpicklingError(f"numpy dtype {dtype} (not a plain number type)")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"an array of type {subtype}")
    return _numpy_core("_reconstruct")(subtype, shape, dtype)


def _scalar(dtype: np.dtype, *data: Any) -> Any:
    return _numpy_core("scalar")(_plain_dtype(dtype), *data)


def _frombuffer(buffer: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
    return _numpy_core("_frombuffer")(buffer, _plain_dtype(dtype), shape, order)


def _latin1(text: str, encoding: str = "latin1") -> bytes:  # how protocol 2 writes bytes from Python 3
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding}")
    return text.encode("latin1")


_BIN_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytearray"): bytearray,
}


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that can build only the values of :data:`_BIN_GLOBALS` (no other import)."""

    def find_class(self, module: str, name: str) -> Any:
        found = _BIN_GLOBALS.get((module, name))
        if found is None:
            raise _Forbidden(f"{module}.{name}")
        return found


class _Forbidden(pickle.UnpicklingError):
    def __init__(self, global_name: str) -> None:
        super().__init__(global_name)
        self.global_name = global_name


def load_data_pickle(path: Path, holds: str) -> Any:
    """The content of a pickle of lists, tuples, bytes, bools, numbers and plain numpy arrays (Python 2
    pickles too: their ``str`` become bytes). ``holds`` says what such a file holds, for the refusal.

    Raises UnsafeFileError if the file would import anything else; ``pickle.UnpicklingError`` (and the
    like) if it is not a pickle.
    """
    with open(path, "rb") as f:
        if is_trusted(path):
            return pickle.load(f, encoding="bytes")
        try:
            return _DataUnpickler(f, encoding="bytes").load()
        except _Forbidden as exc:
            raise refuse(path, exc.global_name, holds) from None


# ---- torch files ------------------------------------------------------------------------------------
_UNSUPPORTED = re.compile(r"(?:GLOBAL|global) ([\w.]+)")


def load_torch_file(path: Path, holds: str, allowed_globals: Iterable[Callable | type] = (), mmap: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``: tensors and plain values, plus the
    ``allowed_globals`` a caller needs (e.g. the numpy types of an older format). ``holds`` says what
    such a file holds, for the refusal.

    Raises UnsafeFileError naming the global when the file needs one outside the allowlist; other
    read errors propagate (a truncated file, not a torch file).
    """
    if is_trusted(path):
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED.search(str(exc))
        if found is None:
            raise
        raise refuse(path, found.group(1), holds) from None
