"""Files from strangers never run code: a crafted verification .bin or checkpoint, whose unpickling would
create a marker file, is refused with one line at every entry point, and the marker never appears. Nor do
they make more than their own bytes: numpy arrays view exactly the file's data, dtypes take no state but
their byte order, a checkpoint's only numpy array is its random state's 624 words, and images and counts
are bounded by the file. Real files of every layout still load (format-2 checkpoints resume);
FACETRAIN_TRUST_PICKLES lets a listed file through, with a warning. tests/test_untrusted_fuzz.py tries many
more crafted files."""
from __future__ import annotations

import fractions
import io
import os
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import facetrain
from facetrain.data import load_verification_bin
from facetrain.data.images import decode_image, encode_jpeg, encode_png
from facetrain.runs.checkpoint import (FORMAT_VERSION, checksum_path, load_checkpoint, newest_checkpoint, rng_state,
                                         save_checkpoint, set_rng_state)
from facetrain.errors import DataError, ResumeError
from facetrain.untrusted import TRUST_ENV, UnsafeFileError, load_data_pickle
from tests.conftest import SMOKE
from tests.crafted_pickles import (UINT8, UINT32, WORDS, array, call, dtype, fields_state, format_2_checkpoint, global_,
                                   ndarray_call, pickle_of, plain_state, python2_array, python2_str, recalled, remembered)
from tests.data_helpers import face
from tests.eval_helpers import load_script, write_checkpoint
from tests.trainer_helpers import final_weights, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_bin(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Payload(marker), encode_jpeg(face(3))], [True])))
    return path, marker


def evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": 3, "backbone": {"w": torch.zeros(1)}, "config": Payload(marker)}, path)
    return path


# ---- the loaders ---------------------------------------------------------------------------------------
def test_a_bin_that_would_run_code_is_refused_naming_the_global(tmp_path):
    path, marker = evil_bin(tmp_path)
    with pytest.raises(UnsafeFileError) as caught:
        load_verification_bin(path)
    assert str(caught.value).startswith(f"{path} refused: it would import posix.system; a verification .bin "
                                        "holds only images and labels; if you made it or trust its source, "
                                        f"{TRUST_ENV}={path}")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_every_real_bin_layout_loads(tmp_path, protocol):
    raw = [face(v) for v in range(4)]
    entries = [raw[0], np.frombuffer(encode_jpeg(raw[1]), np.uint8), encode_jpeg(raw[2]), bytearray(encode_jpeg(raw[3]))]
    for issame in ([False, True], np.array([False, True]), [np.bool_(False), np.bool_(True)]):
        path = tmp_path / "set.bin"
        path.write_bytes(pickle.dumps((entries, issame), protocol=protocol))
        loaded = load_verification_bin(path)
        images, labels = loaded.pair_images(), loaded.issame
        assert images.shape == (4, 112, 112, 3) and np.array_equal(images[0], raw[0])
        assert labels.tolist() == [False, True]


def test_numpy_arrays_of_objects_are_refused(tmp_path):
    path = tmp_path / "objects.bin"
    path.write_bytes(pickle.dumps((np.array([b"x", 1], dtype=object), [True]), protocol=4))
    with pytest.raises(UnsafeFileError, match=rf"^{path} refused: it holds the numpy dtype object \(not a plain number "
                                              r"type\); a verification .bin holds only images and labels"):
        load_verification_bin(path)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "run" / "checkpoints" / "step_000000002.pt", marker)
    for load in (load_checkpoint, facetrain.load_backbone):
        with pytest.raises(UnsafeFileError, match=r"refused: it would import posix.system; a facetrain checkpoint "
                                                  r"holds only tensors and plain values"):
            load(path)
    with pytest.raises(UnsafeFileError):
        facetrain.load_backbone(tmp_path / "run")  # a run directory
    assert not marker.exists()


def test_checkpoints_hold_no_globals_and_format_2_still_loads(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    state = {"backbone": {"w": torch.ones(2)}, "rng": [rng_state()], "config": {"a": [1, None, "x"]}}
    path = save_checkpoint(state, tmp_path / "step_000000001.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    expected = np.random.random(3)
    # format 2, as facetrain wrote it until 2026-11: the numpy random state as numpy's own tuple
    old_rng = {**rng_state(), "numpy": np.random.get_state()}
    np.random.seed(4)
    old_rng["numpy"] = np.random.get_state()
    torch.save({"format_version": 2, "backbone": {"w": torch.ones(2)}, "rng": [old_rng]}, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    np.random.seed(0)
    set_rng_state(loaded["rng"][0])
    assert np.array_equal(np.random.random(3), expected)
    assert FORMAT_VERSION == 3 and load_checkpoint(path)["format_version"] == 3


def test_python2_numpy_arrays_load_encoded_and_decoded(tmp_path):
    """Python 2's numpy pickles: 1-D uint8 arrays of JPEG bytes and HxWx3 uint8 images, their strings ``str``."""
    raw = [face(1), face(2)]
    entries = [python2_array(np.frombuffer(encode_jpeg(raw[0]), np.uint8)), python2_array(raw[1]),
               python2_str(encode_jpeg(raw[0])), python2_array(raw[1])]
    path = tmp_path / "py2.bin"
    path.write_bytes(pickle_of((entries, [True, False])))
    loaded = load_verification_bin(path)
    images, issame = loaded.pair_images(), loaded.issame
    assert images.shape == (4, 112, 112, 3) and np.array_equal(images[1], raw[1]) and np.array_equal(images[0], images[2])
    assert issame.tolist() == [True, False]


# ---- what a file's bytes can make ------------------------------------------------------------------------
def one_line_refusal(path: Path, reason: str) -> str:
    holds = "a (verification .bin|facetrain checkpoint) holds only"
    return rf"^{re.escape(str(path))} refused: {re.escape(reason)}[^\n]*; {holds}[^\n]*$"


@pytest.mark.parametrize("entry, reason", [
    (ndarray_call((2000, 2000, 3), UINT8, b"x", 0, (0, 0, 0)), "it calls numpy.ndarray"),  # 12 MB over one byte
    (call(global_("builtins", "bytearray"), 2**24), "it calls bytearray(int)"),
], ids=["zero strides", "bytearray of a size"])
def test_a_bin_makes_no_array_beyond_its_own_bytes(tmp_path, entry, reason):
    path = tmp_path / "crafted.bin"
    path.write_bytes(pickle_of(([entry, entry], [True])))
    assert path.stat().st_size < 400
    with pytest.raises(UnsafeFileError, match=one_line_refusal(path, reason)):
        load_verification_bin(path)


def test_image_sizes_and_counts_are_bounded_by_the_file(tmp_path):
    wide, copies = tmp_path / "wide.bin", tmp_path / "copies.bin"
    wide.write_bytes(pickle_of(([array((1, 2000, 3), UINT8, bytes(6000))] * 2, [True])))
    with pytest.raises(DataError, match=rf"^image 0 of {re.escape(str(wide))} is 2000x1 pixels; .*at most 1024"):
        load_verification_bin(wide)
    # 2000 distinct arrays viewing one stored JPEG: each is an image of its own, to be decoded
    jpeg = encode_jpeg(np.zeros((512, 512, 3), np.uint8))
    entries = [array((len(jpeg),), UINT8, remembered(jpeg, 0))] + [array((len(jpeg),), UINT8, recalled(0))] * 1999
    copies.write_bytes(pickle_of((entries, [True] * 1000)))
    with pytest.raises(DataError, match=rf"^{re.escape(str(copies))} would decode to 1500 MiB \(2000 images of 512x512\), "
                                        r"more than 256 times its \d+ bytes"):
        load_verification_bin(copies)


def test_an_image_the_file_names_in_many_pairs_is_decoded_and_held_once(tmp_path):
    """make_bin.py stores an image named by several pairs once (pickle's memo): 2000 pair members over one
    stored JPEG load as one image and an index, not 2000 decoded copies."""
    path = tmp_path / "repeated.bin"
    path.write_bytes(pickle_of(([remembered(encode_jpeg(face(1)), 0)] + [recalled(0)] * 1999, [True] * 1000)))
    loaded = load_verification_bin(path)
    assert loaded.images.shape == (1, 112, 112, 3) and loaded.index.tolist() == [0] * 2000
    assert np.array_equal(loaded.images[0], decode_image(encode_jpeg(face(1))))


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"optimize": True, "quality": 40}, {"subsampling": 0}])
def test_jpegs_of_every_layout_and_pngs_load(tmp_path, options):
    image = face(5)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", **options)
    grey = io.BytesIO()
    Image.fromarray(image[..., 1]).save(grey, "JPEG", **options)
    entries = [buffer.getvalue(), grey.getvalue(), encode_png(image), cv2.imencode(".jpg", image[..., ::-1])[1].tobytes()]
    path = tmp_path / "layouts.bin"
    path.write_bytes(pickle.dumps((entries, [True, False])))
    loaded = load_verification_bin(path)
    images = loaded.pair_images()
    assert images.shape == (4, 112, 112, 3) and np.array_equal(images[2], image)


def test_sizes_are_read_from_headers_as_the_decoder_turns_the_images(tmp_path):
    """A header gives the stored size; the decoder turns an image upright by its EXIF orientation (W x H)."""
    def turned_jpeg(value: int) -> bytes:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        buffer = io.BytesIO()
        Image.fromarray(np.full((96, 112, 3), value, np.uint8)).save(buffer, "JPEG", exif=exif.tobytes())
        return buffer.getvalue()

    path = tmp_path / "turned.bin"
    path.write_bytes(pickle.dumps(([turned_jpeg(v) for v in (0, 80, 160, 240)], [True, False])))
    loaded = load_verification_bin(path)
    images = loaded.pair_images()
    assert images.shape == (4, 112, 96, 3) and images[3].min() > 200


def test_a_dtype_takes_from_the_file_its_byte_order_and_nothing_else(tmp_path):
    path = tmp_path / "fields.bin"
    # numpy's own dtype.__setstate__ would give each 1-byte element a uint64 field 1 MiB past it
    fields = fields_state("|", dtype("u8", plain_state("<")), 2**20, 1)
    path.write_bytes(pickle_of(([array((112, 112, 3), dtype("u1", fields), bytes(112 * 112 * 3))] * 2, [True])))
    reason = "it sets the numpy dtype uint8 to the state (3, '|', None, ('f',), "
    with pytest.raises(UnsafeFileError, match=one_line_refusal(path, reason)):
        load_verification_bin(path)
    path.write_bytes(pickle_of(array((2,), dtype("u4", plain_state(">")), b"\0\0\0\1\0\0\0\2")))
    big_endian = load_data_pickle(path, "a test array")
    assert big_endian.dtype == np.dtype(">u4") and big_endian.tolist() == [1, 2]


@pytest.mark.parametrize("keys, reason", [
    (array((624,), dtype("u4", fields_state("<", UINT32, 2**20, 4)), WORDS), "it sets the numpy dtype uint32 to the state"),
    (array((2,), dtype("O"), [b"x", 1]), "it holds the numpy dtype object (not a plain number type)"),
    (ndarray_call((2**40,), UINT32, b"\0" * 4, 0, (0,)), "it calls numpy.ndarray"),  # 4 TiB over 4 bytes
    (array((625,), UINT32, WORDS + bytes(4)), "it holds a numpy array of shape (625,) uint32 (a checkpoint's only numpy "
                                              "array is its random state's 624 uint32 words)"),
], ids=["field dtype outside its element", "object array", "4 TiB of zero strides", "625 words"])
def test_a_checkpoint_holds_no_numpy_but_its_random_state_words(tmp_path, keys, reason):
    path = format_2_checkpoint(tmp_path / "run" / "checkpoints" / "step_000000001.pt", keys)
    for load in (load_checkpoint, facetrain.load_backbone):
        with pytest.raises(UnsafeFileError, match=one_line_refusal(path, reason)):
            load(path)


def test_random_state_keys_of_another_size_are_refused_before_they_are_read(tmp_path):
    state = rng_state()
    name, keys, *rest = state["numpy"]
    state["numpy"] = (name, torch.zeros(1, dtype=torch.int64).expand(2**40), *rest)  # 8 TiB viewing 8 bytes
    loaded = load_checkpoint(save_checkpoint({"rng": [state]}, tmp_path / "step_000000001.pt"))
    with pytest.raises(ResumeError, match=r"^the checkpoint's numpy random state has keys of shape \(1099511627776,\), "
                                          r"not numpy's 624 words"):
        set_rng_state(loaded["rng"][0])


def test_a_format_2_checkpoint_of_older_facetrain_loads_and_resumes(tmp_path):
    make_trainer(tmp_path / "straight", total_steps=4).fit()
    make_trainer(tmp_path / "old", total_steps=2).fit()
    path = newest_checkpoint(tmp_path / "old" / "checkpoints")
    state = load_checkpoint(path, mmap=False)  # not mapped: it is rewritten in place
    # as facetrain wrote it until 2026-11: the numpy random state as np.random.get_state() gives it
    old_numpy = [(name, keys.numpy().astype(np.uint32), *rest) for name, keys, *rest in (rng["numpy"] for rng in state["rng"])]
    torch.save({**state, "format_version": 2, "rng": [{**rng, "numpy": n} for rng, n in zip(state["rng"], old_numpy)]}, path)
    checksum_path(path).unlink()
    resumed = make_trainer(tmp_path / "old", total_steps=4)
    resumed.load_state_dict(load_checkpoint(path))
    assert np.array_equal(np.random.get_state()[1], old_numpy[0][1]) and np.random.get_state()[2] == old_numpy[0][2]
    resumed.fit()
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "old")
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)


def test_a_listed_file_loads_with_full_pickle_and_a_warning(tmp_path, monkeypatch, caplog):
    path = tmp_path / "mine.pt"
    torch.save({"fraction": fractions.Fraction(1, 3)}, path)  # a harmless global, outside the allowlist
    with pytest.raises(UnsafeFileError, match="it would import fractions.Fraction"):
        load_checkpoint(path)
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join(["/elsewhere.pt", str(path)]))
    assert load_checkpoint(path)["fraction"] == fractions.Fraction(1, 3)
    assert f"{path} is listed in {TRUST_ENV}: loading it with full pickle" in caplog.text


# ---- entry points ----------------------------------------------------------------------------------------
def test_training_with_a_crafted_eval_target_stops_with_one_line(run_cli, tmp_path):
    path, marker = evil_bin(tmp_path)
    result = run_cli(*SMOKE, f"eval.targets=[{path}]", "trainer.max_steps=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"facetrain: error: {path} refused: it would import posix.system")
    assert not marker.exists()


def test_resume_from_a_crafted_checkpoint_stops_with_one_line(run_cli, tmp_path):
    marker = tmp_path / "marker"
    run_dir = tmp_path / "outputs" / "stranger" / "run"
    evil_checkpoint(run_dir / "checkpoints" / "step_000000002.pt", marker)
    result = run_cli(*SMOKE, f"resume={run_dir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "refused: it would import posix.system" in result.stderr.strip().splitlines()[-1]
    assert not marker.exists() and (run_dir / "checkpoints" / "step_000000002.pt").is_file()  # not set aside as corrupt


@pytest.mark.parametrize("script", ["evaluate", "extract_features", "export_onnx", "identify"])
def test_scripts_refuse_a_crafted_checkpoint(tmp_path, capsys, script):
    """Every script takes its model through load_backbone (eval_ijb.py too, after reading its IJB folder)."""
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.pt", marker)
    (tmp_path / "lfw.bin").write_bytes(pickle.dumps(([encode_jpeg(face(1))] * 2, [True])))
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.jpg").write_bytes(encode_jpeg(face(2)))
    (tmp_path / "people" / "p1").mkdir(parents=True)
    (tmp_path / "people" / "p1" / "a.jpg").write_bytes(encode_jpeg(face(2)))
    argv = {"evaluate": [str(path), "--targets", str(tmp_path / "lfw.bin")],
            "extract_features": [str(path), "--images", str(tmp_path / "faces"), "--output", str(tmp_path / "f.npy")],
            "export_onnx": [str(path), "--output", str(tmp_path / "m.onnx")],
            "identify": [str(path), "--gallery", str(tmp_path / "people"), "--probe", str(tmp_path / "people"),
                         "--output", str(tmp_path / "out"), "--workers", "0"]}[script]
    assert load_script(script).main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"{script}: error: {path} refused: it would import posix.system"), err
    assert not marker.exists()


def test_evaluate_refuses_a_crafted_target(tmp_path, capsys):
    path, marker = evil_bin(tmp_path)
    write_checkpoint(tmp_path / "run" / "checkpoints" / "step_000000001.pt")
    assert load_script("evaluate").main([str(tmp_path / "run"), "--targets", str(path), "--no-progress"]) == 2
    assert "refused: it would import posix.system" in capsys.readouterr().err
    assert not marker.exists()
