"""Pickles written opcode by opcode, so that every field numpy's own pickler fixes (shape, strides, offset,
dtype state, data length) can say anything, as a stranger's file can. Only opcodes both facetrain's ``.bin``
unpickler and torch's ``weights_only`` unpickler read are used (protocol 2, bytes as ``_codecs.encode``), but
for the Python 2 ``str`` of :func:`python2_str`, which only ``.bin`` sets hold."""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class Ops(bytes):
    """Opcodes that push one value, put into a pickle as they are."""


def value(x: Any) -> Ops:
    """The opcodes that push ``x`` (None, bools, ints, floats, str, bytes, tuples, lists, dicts, or Ops)."""
    if isinstance(x, Ops):
        return x
    if x is None or isinstance(x, bool):
        return Ops({None: b"N", True: b"\x88", False: b"\x89"}[x])
    if isinstance(x, int):
        if -2**31 <= x < 2**31:
            return Ops(b"J" + struct.pack("<i", x))
        encoded = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
        return Ops(b"\x8a" + bytes([len(encoded)]) + encoded)
    if isinstance(x, float):
        return Ops(b"G" + struct.pack(">d", x))
    if isinstance(x, str):
        encoded = x.encode("utf-8", "surrogatepass")
        return Ops(b"X" + struct.pack("<I", len(encoded)) + encoded)
    if isinstance(x, (bytes, bytearray)):  # as Python 3 writes bytes in protocol 2
        return call(global_("_codecs", "encode"), bytes(x).decode("latin1"), "latin1")
    if isinstance(x, tuple):
        return Ops(b"(" + b"".join(map(value, x)) + b"t")
    if isinstance(x, list):
        return Ops(b"](" + b"".join(map(value, x)) + b"e")
    if isinstance(x, dict):
        return Ops(b"}(" + b"".join(value(k) + value(v) for k, v in x.items()) + b"u")
    raise TypeError(f"no opcodes for {type(x).__name__}")


def python2_str(data: bytes) -> Ops:
    """A Python 2 ``str`` (BINSTRING): bytes when read with ``encoding="bytes"``."""
    return Ops(b"T" + struct.pack("<I", len(data)) + data)


def global_(module: str, name: str) -> Ops:
    return Ops(b"c" + f"{module}\n{name}\n".encode())


def call(func: Ops, *args: Any) -> Ops:
    """``func(*args)`` (REDUCE)."""
    return Ops(func + value(args) + b"R")


def new_object(cls: Ops, *args: Any) -> Ops:
    """``cls.__new__(cls, *args)`` (NEWOBJ)."""
    return Ops(cls + value(args) + b"\x81")


def build(obj: Ops, state: Any) -> Ops:
    """``obj`` given ``state`` (BUILD: ``obj.__setstate__(state)``)."""
    return Ops(obj + value(state) + b"b")


def remembered(x: Any, index: int) -> Ops:
    """``x``, kept in the memo at ``index`` (0-255) for :func:`recalled`."""
    return Ops(value(x) + b"q" + bytes([index]))


def recalled(index: int) -> Ops:
    """The memo's value at ``index`` again (BINGET: two bytes a reference)."""
    return Ops(b"h" + bytes([index]))


def pickle_of(x: Any) -> bytes:
    return b"\x80\x02" + value(x) + b"."


# ---- numpy's pickles, every field free ----------------------------------------------------------------
def plain_state(order: str = "|") -> tuple:
    """The state numpy writes for a plain number type (version 3, byte order, no fields)."""
    return (3, order, None, None, None, -1, -1, 0)


def dtype(spec: Any = "u1", state: Any = plain_state()) -> Ops:
    """``numpy.dtype(spec, False, True)`` then BUILD with ``state`` (None: no BUILD)."""
    made = call(global_("numpy", "dtype"), spec, False, True)
    return made if state is None else build(made, state)


def fields_state(order: str, field_dtype: Ops, offset: int, itemsize: int) -> tuple:
    """A dtype state with one field ``f`` of ``field_dtype`` at ``offset`` bytes into an ``itemsize``-byte element."""
    return (3, order, None, ("f",), {"f": (field_dtype, offset)}, itemsize, 1, 0x10)


def subarray_state(order: str, base: Ops, shape: tuple, itemsize: int) -> tuple:
    """A dtype state making each element a ``shape`` sub-array of ``base``."""
    return (3, order, (base, shape), None, None, itemsize, 1, 0)


UINT8, UINT32 = dtype("u1"), dtype("u4", plain_state("<"))
WORDS = np.arange(624, dtype=np.uint32).tobytes()  # as many bytes as numpy's legacy random state holds


def reconstructed(core: str = "numpy._core") -> Ops:
    """``_reconstruct(numpy.ndarray, (0,), b'b')``: an array before its BUILD."""
    return call(global_(f"{core}.multiarray", "_reconstruct"), global_("numpy", "ndarray"), (0,), b"b")


def array(shape: Any, dtype_ops: Any, data: Any, fortran_order: Any = False, core: str = "numpy._core") -> Ops:
    """An ndarray as numpy pickles it (protocols 2-4): ``_reconstruct`` then BUILD ``(1, shape, dtype, order, data)``."""
    return build(reconstructed(core), (1, shape, dtype_ops, fortran_order, data))


def python2_array(data: np.ndarray) -> Ops:
    """A uint8 array as Python 2's numpy pickles it (protocol 2, its strings as Python 2 ``str``)."""
    dtype_ops = build(call(global_("numpy", "dtype"), python2_str(b"u1"), 0, 1), (3, python2_str(b"|"), None, None, None, -1, -1, 0))
    return build(call(global_("numpy.core.multiarray", "_reconstruct"), global_("numpy", "ndarray"), (0,), python2_str(b"b")),
                 (1, data.shape, dtype_ops, False, python2_str(data.tobytes())))


def ndarray_call(shape: Any, dtype_ops: Any, buffer: Any, offset: Any, strides: Any) -> Ops:
    """``numpy.ndarray(shape, dtype, buffer, offset, strides)``: a view of any memory, were it allowed."""
    return call(global_("numpy", "ndarray"), shape, dtype_ops, buffer, offset, strides)


def frombuffer(buffer: Any, dtype_ops: Any, shape: Any, order: str = "C") -> Ops:
    """An ndarray as numpy pickles it in protocol 5: ``_frombuffer(buffer, dtype, shape, order)``."""
    return call(global_("numpy._core.numeric", "_frombuffer"), buffer, dtype_ops, shape, order)


def torch_file(path: Path, pickled: bytes) -> Path:
    """A torch zip file (what ``torch.save`` writes) whose ``data.pkl`` is ``pickled``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def format_2_checkpoint(path: Path, keys: Ops) -> Path:
    """A format-2 checkpoint whose numpy random state holds ``keys`` where numpy's 624 words go."""
    rng = {"python": None, "numpy": ("MT19937", keys, 624, 0, 0.0), "torch": None}
    return torch_file(path, pickle_of({"format_version": 2, "backbone": {}, "rng": [rng]}))

