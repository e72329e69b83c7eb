"""Files from strangers are data: loading a verification ``.bin``, a checkpoint or released weights never
runs code.

Pickle can call any importable function while it loads (``os.system`` included). Every pickle facetrain
reads goes through an allowlist instead: :func:`load_data_pickle` for insightface's ``.bin`` sets (lists
and tuples of bytes, bools, and uint8/bool numpy arrays), :func:`load_torch_file` for ``.pt``/``.pth``
files (torch's ``weights_only`` loader: tensors and plain values, plus exactly the globals a caller names).
Anything else is refused with one line naming the file and the global it would have imported.

numpy's own pickle globals would let a file build arrays over memory it does not hold (``numpy.ndarray``
with any buffer, offset and strides) and dtypes with fields outside their element (``dtype.__setstate__``).
Files therefore get stand-ins in their place (:class:`FileArray`, :class:`FileDtype`): an array views
exactly its bytes from the file, a dtype is a plain number type whose state may set only its byte order.

A user who trusts a file that needs more lists it in ``FACETRAIN_TRUST_PICKLES`` (paths separated by
``:``); such a file is loaded with plain pickle, with a warning naming it.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
import reprlib
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from facetrain.errors import FacetrainError

TRUST_ENV = "FACETRAIN_TRUST_PICKLES"

log = logging.getLogger("facetrain")


class UnsafeFileError(FacetrainError):
    """A file would run code (import a global outside the allowlist) or build objects outside its own bytes
    (numpy arrays or dtypes that view memory it does not hold) if it were loaded."""


def refuse(path: Path, reason: str, holds: str) -> UnsafeFileError:
    """``path`` refused for ``reason`` (e.g. "it would import posix.system")."""
    return UnsafeFileError(f"{path} refused: {reason}; {holds}",
                           f"if you made it or trust its source, {TRUST_ENV}={path} loads it with full pickle "
                           "(which can run code)")


def is_trusted(path: Path) -> bool:
    """Whether ``path`` is listed in ``FACETRAIN_TRUST_PICKLES``; logs a warning when it is."""
    listed = [Path(entry).resolve() for entry in os.environ.get(TRUST_ENV, "").split(os.pathsep) if entry]
    if Path(path).resolve() not in listed:
        return False
    log.warning(f"warning: {path} is listed in {TRUST_ENV}: loading it with full pickle, which can run code")
    return True


# ---- numpy arrays, as numpy pickles them ---------------------------------------------------------------
class Refused(Exception):
    """The file holds something the stand-ins below do not accept; the loaders turn it into an UnsafeFileError."""


def _brief(value: Any) -> str:
    return reprlib.repr(value)


_PLAIN_KINDS = "biuf"  # bool, signed and unsigned integers, floats: no objects, records, sub-arrays or dates


def _plain_dtype(spec: Any) -> np.dtype:
    if not isinstance(spec, (str, bytes)):
        raise Refused(f"it holds a numpy dtype given as {type(spec).__name__}")
    try:
        dtype = np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec)
    except (TypeError, ValueError):
        raise Refused(f"it holds the numpy dtype {_brief(spec)}") from None
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise Refused(f"it holds the numpy dtype {dtype} (not a plain number type)")
    return dtype


class FileDtype:
    """``numpy.dtype(spec, align, copy)`` as a pickle calls it: a plain number type. The BUILD that follows
    may set its byte order and nothing else; numpy's own ``dtype.__setstate__`` would take fields,
    sub-arrays and offsets from the file, so it is never reached."""

    dtype: Optional[np.dtype] = None  # None when made without its arguments (pickle's NEWOBJ)

    def __init__(self, spec: Any, *flags: Any) -> None:
        self.dtype = _plain_dtype(spec)

    def __setstate__(self, state: Any) -> None:
        dtype = self.value()
        text = tuple(v.decode("latin1") if isinstance(v, bytes) else v for v in state) if isinstance(state, tuple) else state
        for ordered in (dtype.newbyteorder("<"), dtype.newbyteorder(">")):
            if text == ordered.__reduce__()[2]:  # (3, byte order, None, None, None, -1, -1, 0)
                self.dtype = ordered
                return
        raise Refused(f"it sets the numpy dtype {dtype} to the state {_brief(state)} (a plain number type's "
                      "state holds only its byte order)")

    def value(self) -> np.dtype:
        if self.dtype is None:
            raise Refused("it holds a numpy dtype without its type")
        return self.dtype


class _NdarrayName:
    """What ``numpy.ndarray`` names in a pickle: the type argument of ``_reconstruct``, never a constructor
    (``numpy.ndarray(shape, dtype, buffer, offset, strides)`` would view memory the file does not hold)."""

    def __new__(cls, *args: Any) -> Any:
        raise Refused("it calls numpy.ndarray (arrays come only from their own bytes in the file)")


def _array(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """The array a pickle describes, viewing exactly its bytes from the file (no strides, no offsets)."""
    if not isinstance(data, (bytes, bytearray)):
        raise Refused(f"it holds a numpy array whose data is given as {type(data).__name__}, not bytes")
    if not isinstance(dtype, FileDtype):
        raise Refused(f"it holds a numpy array whose dtype is given as {type(dtype).__name__}")
    dtype = dtype.value()
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)) or order not in ("C", "F"):
        raise Refused(f"it holds a numpy array of shape {_brief(shape)} in order {_brief(order)}")
    needed = math.prod(shape) * dtype.itemsize
    if needed != len(data):
        raise Refused(f"it holds a numpy array of shape {shape} {dtype} ({needed} bytes) over {len(data)} bytes")
    return np.frombuffer(data, dtype).reshape(shape, order=order)


class FileArray:
    """``numpy.core.multiarray._reconstruct(numpy.ndarray, shape, dtype)`` as a pickle calls it: a stand-in
    whose BUILD state ``(version, shape, FileDtype, fortran_order, data)`` must hold exactly the array's
    bytes. The loaders swap it for that array once the file is read; :meth:`check` may refuse arrays a
    loader has no use for."""

    array: Optional[np.ndarray] = None  # None until BUILD gives the data

    def __init__(self, subtype: Any, *ignored: Any) -> None:  # numpy writes (ndarray, (0,), b'b'): an empty start
        if subtype is not _NdarrayName:
            raise Refused(f"it holds an array of type {_brief(subtype)}")

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) in (4, 5)):  # numpy reads it without the version too
            raise Refused(f"it holds a numpy array with the state {_brief(state)}")
        shape, dtype, fortran_order, data = state[-4:]
        self.hold(_array(data, dtype, shape, "F" if fortran_order else "C"))

    def hold(self, array: np.ndarray) -> None:
        self.check(array)
        self.array = array

    def check(self, array: np.ndarray) -> None:
        """Refuse an array this file has no use for (every plain array is welcome here)."""

    def value(self) -> np.ndarray:
        if self.array is None:
            raise Refused("it holds a numpy array without its data")
        return self.array


_NUMPY_CORES = ("numpy.core", "numpy._core")  # numpy 2 renamed numpy.core


def numpy_array_globals(array_type: type[FileArray] = FileArray) -> dict[str, Any]:
    """The globals numpy's pickles of plain arrays name (numpy 1 and 2), bound to checked stand-ins."""
    return {**{f"{core}.multiarray._reconstruct": array_type for core in _NUMPY_CORES},
            "numpy.ndarray": _NdarrayName, "numpy.dtype": FileDtype}


def _resolved(content: Any) -> Any:
    """``content`` with every stand-in swapped for its array or dtype: lists and dicts changed in place,
    tuples rebuilt, each container visited once (pickles may share them, or make them hold themselves; a
    tuple reached again through itself is left as it was, its stand-ins inert objects the callers refuse)."""
    seen: dict[int, Any] = {}

    def resolve(value: Any) -> Any:
        if isinstance(value, (FileArray, FileDtype)):
            return value.value()
        if not isinstance(value, (list, tuple, dict)) or id(value) in seen:
            return seen.get(id(value), value)
        seen[id(value)] = value
        if isinstance(value, list):
            value[:] = [resolve(item) for item in value]
        elif isinstance(value, dict):
            for key, item in value.items():
                value[key] = resolve(item)
        else:
            seen[id(value)] = value = tuple(resolve(item) for item in value)
        return value

    return resolve(content)


# ---- insightface .bin sets --------------------------------------------------------------------------
def _latin1(text: Any, encoding: Any = "latin1") -> bytes:  # how protocol 2 writes bytes from Python 3
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", b"latin1", b"latin-1"):
        raise Refused(f"it calls _codecs.encode with {type(text).__name__}, {_brief(encoding)}")
    return text.encode("latin1")


def _bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
    """``bytearray`` as pickles call it: with its bytes (or their latin-1 text), never ``bytearray(n)``."""
    if isinstance(source, bytes) and encoding is None:
        return bytearray(source)
    if isinstance(source, str):
        return bytearray(_latin1(source, encoding))
    raise Refused(f"it calls bytearray({type(source).__name__}) (pickles give a bytearray its bytes)")


def _scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar`` (a numpy bool or number) as its Python value."""
    return _array(data, dtype, (), "C").item()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> FileArray:
    """``numpy.core.numeric._frombuffer`` (protocol 5 arrays), as a stand-in like ``_reconstruct``'s."""
    stand_in = FileArray(_NdarrayName)
    stand_in.hold(_array(buffer, dtype, shape, order))
    return stand_in


_BIN_GLOBALS: dict[str, Any] = {
    **numpy_array_globals(),
    **{f"{core}.multiarray.scalar": _scalar for core in _NUMPY_CORES},
    **{f"{core}.numeric._frombuffer": _frombuffer for core in _NUMPY_CORES},
    "_codecs.encode": _latin1,
    "builtins.bytearray": _bytearray,
    "__builtin__.bytearray": _bytearray,
}


_COPYING = {"_codecs.encode", "builtins.bytearray", "__builtin__.bytearray"}  # make new bytes from a value


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that can build only the values of :data:`_BIN_GLOBALS` (no other import), and whose calls
    make at most ``budget`` bytes in all (a file could otherwise copy one stored value many times over with
    a few bytes per copy)."""

    def __init__(self, file: Any, budget: int) -> None:
        super().__init__(file, encoding="bytes")
        self.budget = budget

    def find_class(self, module: str, name: str) -> Any:
        found = _BIN_GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise Refused(f"it would import {module}.{name}")
        return self._counted(found) if f"{module}.{name}" in _COPYING else found

    def _counted(self, make: Callable[..., bytes | bytearray]) -> Callable[..., bytes | bytearray]:
        def counted(*args: Any) -> bytes | bytearray:
            made = make(*args)
            self.budget -= len(made)
            if self.budget < 0:
                raise Refused("it makes more bytes than the file holds (copies of the same stored value)")
            return made

        return counted


def load_data_pickle(path: Path, holds: str) -> Any:
    """The content of a pickle of lists, tuples, bytes, bools, numbers and plain numpy arrays (Python 2
    pickles too: their ``str`` become bytes). ``holds`` says what such a file holds, for the refusal.

    Every array views exactly its own bytes from the file. Raises UnsafeFileError if the file would
    import anything else or declares an array its bytes do not fill; ``pickle.UnpicklingError`` (and
    the like) if it is not a pickle.
    """
    with open(path, "rb") as f:
        if is_trusted(path):
            return pickle.load(f, encoding="bytes")
        try:
            return _resolved(_DataUnpickler(f, budget=os.fstat(f.fileno()).st_size).load())
        except Refused as exc:
            raise refuse(path, str(exc), holds) from None


# ---- torch files ------------------------------------------------------------------------------------
_UNSUPPORTED = re.compile(r"(?:GLOBAL|global) ([\w.]+)")


def load_torch_file(path: Path, holds: str, allowed_globals: Iterable[Callable | type | tuple[Any, str]] = (),
                    mmap: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``: tensors and plain values, plus the
    ``allowed_globals`` a caller needs (e.g. :func:`numpy_array_globals` for an older format; their
    stand-ins are swapped for what they stand for). ``holds`` says what such a file holds, for the refusal.

    Raises UnsafeFileError naming the global when the file needs one outside the allowlist, or saying what
    a stand-in refused; other read errors propagate (a truncated file, not a torch file).
    """
    if is_trusted(path):
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return _resolved(torch.load(path, map_location="cpu", weights_only=True, mmap=mmap))
    except Refused as exc:
        raise refuse(path, str(exc), holds) from None
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED.search(str(exc))
        if found is None:
            raise
        raise refuse(path, f"it would import {found.group(1)}", holds) from None
