"""Crafted verification .bin sets and checkpoints, written opcode by opcode: every shape, stride, offset,
dtype state, data length and count a stranger's pickle can state is refused with one line naming the file,
and loading it adds little to the process's memory.

Each load runs in a forked child whose address space is capped (RLIMIT_AS: what it had mapped plus
``CAP_MIB``), so a regression fails here instead of taking the machine's memory, and one that crashes numpy
(a dtype whose fields lie outside its element) fails as a dead child instead of ending pytest."""
from __future__ import annotations

import json
import os
import resource
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from facetrain.data import load_verification_bin
from facetrain.data.images import encode_jpeg, encode_png
from facetrain.runs.checkpoint import load_checkpoint
from facetrain.errors import FacetrainError
from tests.crafted_pickles import (UINT8, UINT32, WORDS, Ops, array, build, call, dtype, fields_state, format_2_checkpoint,
                                   frombuffer, global_, ndarray_call, new_object, pickle_of, plain_state, recalled,
                                   reconstructed, remembered, subarray_state, value)
from tests.data_helpers import face

CAP_MIB = 384  # address space a load may add before it fails with MemoryError
GROWTH_MIB = 48  # peak resident memory a refused file may add


def _capped_load(load: Callable[[Path], Any], path: Path) -> dict:
    """In the child: load ``path`` under the cap; what happened, and how much the peak RSS grew."""
    page = os.sysconf("SC_PAGE_SIZE")
    mapped = int(Path("/proc/self/statm").read_text().split()[0]) * page
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (CAP_MIB << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load(path)
        outcome: dict = {"loaded": True}
    except FacetrainError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - a raw error is what the test reports
        outcome = {"raw": f"{type(exc).__name__}: {exc}"[:400]}
    outcome["growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return outcome


def load_in_child(load: Callable[[Path], Any], path: Path) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        os.close(read_end)
        try:
            report = json.dumps(_capped_load(load, path)).encode()
        except BaseException as exc:  # noqa: BLE001
            report = json.dumps({"raw": repr(exc)}).encode()
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(report)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and report, f"loading {path.name} killed the process (wait status {status})"
    return json.loads(report)


def assert_refused_in_one_line(outcome: dict, path: Path, expected: str) -> None:
    assert "error" in outcome, outcome
    message = outcome["message"]
    assert "\n" not in message and str(path) in message and expected in message, message
    assert outcome["growth_mib"] < GROWTH_MIB, outcome


# ---- verification .bin ------------------------------------------------------------------------------------
GIANT = (20000, 20000, 3)  # 1.2 GB of pixels


def one_entry_bin(entry: Ops, labels: Any = (True,)) -> bytes:
    return pickle_of(([entry, entry], list(labels)))


def jpeg_claiming(height: int, width: int) -> bytes:
    """A real 112x112 JPEG whose frame header claims ``height x width``."""
    data = bytearray(encode_jpeg(face(1)))
    start = data.index(b"\xff\xc0") + 5  # SOF0: marker, length, precision, then height and width
    data[start:start + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def png_claiming(height: int, width: int) -> bytes:
    """A real 112x112 PNG whose IHDR chunk claims ``height x width`` (with a matching checksum)."""
    data = bytearray(encode_png(face(1)))
    data[16:24] = struct.pack(">II", width, height)  # after the signature (8), the chunk's length (4) and type (4)
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # over the type and 13 bytes of IHDR
    return bytes(data)


def nested(depth: int) -> Ops:
    return Ops(b"]" * depth + b"a" * (depth - 1))  # each list appended to the one before it


BIN_CASES: dict[str, tuple[bytes, str]] = {
    # numpy.ndarray(shape, dtype, buffer, offset, strides): any view of one byte
    "zero strides": (one_entry_bin(ndarray_call(GIANT, UINT8, b"x", 0, (0, 0, 0))), "refused: it calls numpy.ndarray"),
    "negative strides": (one_entry_bin(ndarray_call((112, 112, 3), UINT8, b"x" * 9, 8, (-1, -1, -1))), "it calls numpy.ndarray"),
    "offset past the buffer": (one_entry_bin(ndarray_call((1,), UINT8, b"x", 2**40, (1,))), "it calls numpy.ndarray"),
    "ndarray by NEWOBJ": (one_entry_bin(new_object(global_("numpy", "ndarray"), GIANT)), "it calls numpy.ndarray"),
    "bytearray of a size": (pickle_of(([call(global_("builtins", "bytearray"), 2**30)] * 2, [True])), "bytearray(int)"),
    "buffer of a size": (one_entry_bin(frombuffer(call(global_("builtins", "bytearray"), 2**30), UINT8, (2**30,))), "bytearray(int)"),
    # _reconstruct and _frombuffer declaring more than their bytes
    "shape over one byte": (one_entry_bin(array(GIANT, UINT8, b"x")), "(1200000000 bytes) over 1 bytes"),
    "frombuffer over one byte": (one_entry_bin(frombuffer(b"x", UINT8, GIANT)), "over 1 bytes"),
    "huge dimensions": (one_entry_bin(array((2**62, 2**62, 3), UINT8, b"")), "over 0 bytes"),
    "negative dimension": (one_entry_bin(array((-1, 112, 3), UINT8, b"")), "of shape (-1, 112, 3)"),
    "data as a list": (one_entry_bin(array((2,), UINT8, [1, 2])), "whose data is given as list"),
    "array without its data": (one_entry_bin(reconstructed()), "a numpy array without its data"),
    "array of another type": (one_entry_bin(build(call(global_("numpy._core.multiarray", "_reconstruct"),
                                                       global_("builtins", "bytearray"), (0,), b"b"), ())),
                              "an array of type"),
    # dtype state from the file: fields outside the element, sub-arrays, sizes, metadata
    "dtype fields out of bounds": (one_entry_bin(array((112, 112, 3), dtype("u1", fields_state("|", UINT32, 2**44, 1)),
                                                       bytes(112 * 112 * 3))), "it sets the numpy dtype uint8 to the state"),
    "dtype sub-array": (one_entry_bin(array((1,), dtype("u1", subarray_state("|", UINT8, (2**40,), 2**40)), b"x")), "to the state"),
    "dtype item size": (one_entry_bin(array((1,), dtype("u1", (3, "|", None, None, None, 2**40, 1, 0)), b"x")), "to the state"),
    "dtype metadata": (one_entry_bin(array((1,), dtype("u1", (4, "|", None, None, None, -1, -1, 0, {"m": 1})), b"x")), "to the state"),
    "dtype twice": (one_entry_bin(array((1,), build(dtype("u1"), fields_state("|", UINT8, 2**44, 1)), b"x")), "to the state"),
    "object dtype": (one_entry_bin(array((2,), dtype("O"), [b"x", 1])), "the numpy dtype object"),
    "record dtype": (one_entry_bin(array((1,), dtype("u1,u8"), bytes(9))), "not a plain number type"),
    "sub-array dtype spec": (one_entry_bin(array((1,), dtype("(1073741824,)u1"), b"x")), "not a plain number type"),
    "dtype of an int": (one_entry_bin(array((1,), dtype(8), b"x")), "numpy dtype given as int"),
    "scalar of wrong length": (pickle_of(([b"x", b"y"], [call(global_("numpy._core.multiarray", "scalar"), dtype("b1"), b"\1\2")])),
                               "over 2 bytes"),
    "other numpy global": (one_entry_bin(call(global_("numpy.lib.stride_tricks", "as_strided"), 1)),
                           "it would import numpy.lib.stride_tricks.as_strided"),
    # sizes and counts
    "bytes longer than memory": (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x", "is not a verification .bin"),
    "an int for an image": (one_entry_bin(value(10**9)), "is of type int, not encoded image bytes"),
    "many copies of one image": (pickle_of(([call(remembered(global_("builtins", "bytearray"), 1),
                                                  remembered(encode_jpeg(face(1)), 0))]
                                             + [call(recalled(1), recalled(0))] * 34_999, [True] * 17_500)),
                                 "makes more bytes than the file holds"),
    "a header claiming 3000x3000": (one_entry_bin(value(jpeg_claiming(3000, 3000))), "is 3000x3000 pixels"),
    "a header claiming 65535x65535": (one_entry_bin(value(jpeg_claiming(65535, 65535))), "is 65535x65535 pixels"),
    "a PNG header claiming 5000x5000": (one_entry_bin(value(png_claiming(5000, 5000))), "is 5000x5000 pixels"),
    "an array 2000 wide": (one_entry_bin(array((1, 2000, 3), UINT8, bytes(6000))), "is 2000x1 pixels"),
    "an empty image": (one_entry_bin(array((0, 2**40, 3), UINT8, b"")), "is 1099511627776x0 pixels"),
    "labels of arrays": (pickle_of(([b"x", b"y"], [remembered(array((2**16,), UINT8, bytes(2**16)), 0), recalled(0)])),
                         "labels are not bools"),
    "deep nesting": (pickle_of((nested(100_000), [True])), "is not a verification .bin"),
    "a list holding itself": (pickle_of(([Ops(b"]q\x00h\x00a"), b"x"], [True])), "is of type list"),
}


@pytest.mark.parametrize("case", BIN_CASES)
def test_a_crafted_bin_is_refused_in_one_line_within_bounded_memory(tmp_path, case):
    pickled, expected = BIN_CASES[case]
    path = tmp_path / "crafted.bin"
    path.write_bytes(pickled)
    assert len(pickled) < 300_000
    assert_refused_in_one_line(load_in_child(load_verification_bin, path), path, expected)


# ---- checkpoints (format 2: numpy's random state) -----------------------------------------------------------
CHECKPOINT_CASES: dict[str, tuple[Ops, str]] = {
    "field dtype outside its element": (array((624,), dtype("u4", fields_state("<", UINT32, 2**20, 4)), WORDS),
                                        "it sets the numpy dtype uint32 to the state"),
    "sub-array dtype": (array((624,), dtype("u4", subarray_state("<", UINT32, (2**38,), 2**40)), WORDS), "to the state"),
    "object array": (array((2,), dtype("O"), [b"x", 1]), "the numpy dtype object"),
    "4 TiB of zero strides over 4 bytes": (ndarray_call((2**40,), UINT32, b"\0" * 4, 0, (0,)), "it calls numpy.ndarray"),
    "625 words": (array((625,), UINT32, WORDS + bytes(4)), "of shape (625,) uint32"),
    "bytes for words": (array((2496,), UINT8, WORDS), "of shape (2496,) uint8"),
    "floats for words": (array((312,), dtype("f8", plain_state("<")), WORDS), "of shape (312,) float64"),
    "words over 4 bytes": (array((624,), UINT32, b"\0" * 4), "over 4 bytes"),
    "words without data": (reconstructed(), "without its data"),
    "numpy's dtype class": (call(global_("numpy.dtypes", "UInt32DType")), "it would import numpy.dtypes.UInt32DType"),
    "numpy scalar": (call(global_("numpy._core.multiarray", "scalar"), UINT32, bytes(4)),
                     "it would import numpy._core.multiarray.scalar"),
    "protocol 5 buffer": (frombuffer(WORDS, UINT32, (624,)), "it would import numpy._core.numeric._frombuffer"),
    "ndarray by NEWOBJ": (new_object(global_("numpy", "ndarray"), (2**40,)), "it calls numpy.ndarray"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_crafted_checkpoint_is_refused_in_one_line_within_bounded_memory(tmp_path, case):
    keys, expected = CHECKPOINT_CASES[case]
    path = format_2_checkpoint(tmp_path / "step_000000001.pt", keys)
    outcome = load_in_child(load_checkpoint, path)
    assert_refused_in_one_line(outcome, path, expected)
    assert outcome["error"] == "UnsafeFileError" and outcome["message"].startswith(f"{path} refused: it ")


@pytest.mark.parametrize("core, order", [("numpy.core", "<"), ("numpy._core", "<"), ("numpy._core", ">")])
def test_numpy_random_state_words_load_under_both_numpy_names_and_byte_orders(tmp_path, core, order):
    words = np.arange(624, dtype=f"{order}u4")
    path = format_2_checkpoint(tmp_path / "old.pt", array((624,), dtype("u4", plain_state(order)), words.tobytes(), core=core))
    keys = load_checkpoint(path)["rng"][0]["numpy"][1]
    assert type(keys) is np.ndarray and keys.shape == (624,) and keys.tolist() == list(range(624))
