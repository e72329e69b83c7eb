"""Files from strangers never run code: a crafted verification .bin or checkpoint, whose unpickling would
create a marker file, is refused with one line at every entry point, and the marker never appears. Real
files of every layout still load; FACETRAIN_TRUST_PICKLES lets a listed file through, with a warning."""
from __future__ import annotations

import fractions
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import facetrain
from facetrain.data import load_verification_bin
from facetrain.data.images import encode_jpeg
from facetrain.engine.checkpoint import FORMAT_VERSION, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from facetrain.errors import DataError
from facetrain.untrusted import TRUST_ENV, UnsafeFileError
from tests.conftest import SMOKE
from tests.data_helpers import face
from tests.eval_helpers import load_script, write_checkpoint

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
        images, labels = load_verification_bin(path)
        assert images.shape == (4, 112, 112, 3) and np.array_equal(images[0], raw[0])
        assert labels.tolist() == [False, True]


def test_numpy_arrays_of_objects_are_refused(tmp_path):
    path = tmp_path / "objects.bin"
    path.write_bytes(pickle.dumps((np.array([b"x", 1], dtype=object), [True]), protocol=4))
    with pytest.raises(DataError, match=r"is not a verification .bin \(UnpicklingError: numpy dtype object"):
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
