"""Every script meets bad input with one line, ``<script>: error: ...``, and exit code 2: missing files,
files of the wrong kind, empty folders and bad flag values."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval_helpers import edited_checkpoint, load_script, not_weight_files, set_config, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(capsys, script: str, argv: list[str]) -> str:
    """Run ``scripts/<script>.py`` with ``argv``; assert exit code 2 and a single ``<script>: error:`` line."""
    try:
        code = load_script(script).main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (script, argv, err)
    assert len(err) == 1 and err[0].startswith(f"{script}") and ": error: " in err[0], err
    return err[0]


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "run" / "checkpoints" / "step_000000001.pt"
    write_checkpoint(path)
    return path


def test_evaluate(capsys, tmp_path, checkpoint):
    import pickle

    from facetrain.data.images import encode_jpeg
    from tests.data_helpers import face

    (tmp_path / "lfw.bin").write_bytes(pickle.dumps(([encode_jpeg(face(1))] * 2, [True])))
    root = ["--targets", "lfw", "--data-root", str(tmp_path)]
    assert "does not exist" in one_line(capsys, "evaluate", [str(tmp_path / "nothing"), *root])
    (tmp_path / "empty").mkdir()
    assert "holds no checkpoint" in one_line(capsys, "evaluate", [str(tmp_path / "empty"), *root])
    assert "'lfw' not found" in one_line(capsys, "evaluate", [str(checkpoint), "--targets", "lfw", "--data-root",
                                                              str(tmp_path / "empty")])
    assert "--batch-size must be at least 1" in one_line(capsys, "evaluate", [str(checkpoint), "--targets", "x", "--batch-size", "0"])
    assert "invalid int value" in one_line(capsys, "evaluate", [str(checkpoint), "--targets", "x", "--batch-size", "many"])


def test_eval_ijb(capsys, tmp_path, checkpoint):
    assert "does not exist" in one_line(capsys, "eval_ijb", [str(checkpoint), "--ijb-root", str(tmp_path / "none"), "--target", "IJBC"])
    (tmp_path / "IJBC").mkdir()
    assert "loose_crop" in one_line(capsys, "eval_ijb", [str(checkpoint), "--ijb-root", str(tmp_path), "--target", "IJBC"])
    assert "invalid choice" in one_line(capsys, "eval_ijb", [str(checkpoint), "--ijb-root", str(tmp_path), "--target", "LFW"])


def test_identify(capsys, tmp_path, checkpoint):
    (tmp_path / "gallery" / "someone").mkdir(parents=True)
    (tmp_path / "gallery" / "someone" / "a.jpg").write_bytes(b"x")
    assert "probe folder" in one_line(capsys, "identify", [str(checkpoint), "--gallery", str(tmp_path / "gallery"),
                                                           "--probe", str(tmp_path / "none")])
    (tmp_path / "empty").mkdir()
    assert "holds no identity folders" in one_line(capsys, "identify", [str(checkpoint), "--gallery", str(tmp_path / "empty"),
                                                                        "--probe", str(tmp_path / "gallery")])
    assert "pass either --gallery and --probe, or --tinyface" in one_line(capsys, "identify", [str(checkpoint)])
    assert "--fpirs must lie in (0, 1]" in one_line(capsys, "identify", [str(checkpoint), "--tinyface", "x", "--fpirs", "2"])


def test_make_bin(capsys, tmp_path):
    assert "pair list" in one_line(capsys, "make_bin", [str(tmp_path / "none.txt"), "--output", str(tmp_path / "x.bin")])
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg 1\n")
    assert "should end in .bin" in one_line(capsys, "make_bin", [str(tmp_path / "pairs.txt"), "--output", str(tmp_path / "x")])
    assert "pairs.txt:1: image" in one_line(capsys, "make_bin", [str(tmp_path / "pairs.txt"), "--output", str(tmp_path / "x.bin")])


def test_export_onnx(capsys, tmp_path):
    assert "does not exist" in one_line(capsys, "export_onnx", [str(tmp_path / "none.pt"), "--output", str(tmp_path / "m.onnx")])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert "is neither a torch file" in one_line(capsys, "export_onnx", [str(tmp_path / "text.pt"), "--output",
                                                                         str(tmp_path / "m.onnx")])
    assert "required" in one_line(capsys, "export_onnx", [str(tmp_path / "text.pt")])


def test_convert_to_rec(capsys, tmp_path):
    assert "does not exist" in one_line(capsys, "convert_to_rec", [str(tmp_path / "none"), str(tmp_path / "out")])
    (tmp_path / "empty").mkdir()
    assert "holds no images" in one_line(capsys, "convert_to_rec", [str(tmp_path / "empty"), str(tmp_path / "out")])
    (tmp_path / "list.txt").write_text("a.jpg notanumber\n")
    assert "is not 'path label'" in one_line(capsys, "convert_to_rec", [str(tmp_path / "list.txt"), str(tmp_path / "out")])
    assert "give SRC and DST" in one_line(capsys, "convert_to_rec", [str(tmp_path / "empty")])


def test_extract_features(capsys, tmp_path, checkpoint):
    (tmp_path / "empty").mkdir()
    out = ["--output", str(tmp_path / "f.npy")]
    assert "holds no images" in one_line(capsys, "extract_features", [str(checkpoint), "--images", str(tmp_path / "empty"), *out])
    from facetrain.data.images import encode_jpeg
    from tests.data_helpers import face

    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.jpg").write_bytes(encode_jpeg(face(1)))
    assert "does not exist" in one_line(capsys, "extract_features", [str(tmp_path / "x.pt"), "--images",
                                                                      str(tmp_path / "faces"), *out])
    assert "--workers must be at least 0" in one_line(capsys, "extract_features", [str(checkpoint), "--images", str(tmp_path),
                                                                                   "--workers", "-1", *out])


def test_compare_runs(capsys, tmp_path):
    assert "does not exist" in one_line(capsys, "compare_runs", [str(tmp_path / "none")])
    assert "holds no metrics.json" in one_line(capsys, "compare_runs", [str(tmp_path)])


def test_benchmark(capsys, tmp_path):
    assert "does not exist" in one_line(capsys, "benchmark", ["data", str(tmp_path / "none")])
    assert "invalid int value" in one_line(capsys, "benchmark", ["train", "--steps", "abc"])
    assert "invalid choice" in one_line(capsys, "benchmark", ["nonsense"])


def test_import_and_export_weights(capsys, tmp_path, checkpoint):
    assert "does not exist" in one_line(capsys, "import_weights", [str(tmp_path / "none.pth"), "--output", str(tmp_path / "o.pt")])
    assert "is the file being imported" in one_line(capsys, "import_weights", [str(checkpoint), "--output", str(checkpoint)])
    assert "does not exist" in one_line(capsys, "export_weights", [str(tmp_path / "none"), "--format", "safetensors",
                                                                    "--output", str(tmp_path / "o")])
    assert "invalid choice" in one_line(capsys, "export_weights", [str(checkpoint), "--format", "mxnet", "--output", "o"])


def model_scripts(tmp_path: Path) -> dict[str, list[str]]:
    """Every script that takes a model file, with the rest of its arguments (readable, so the model is what fails)."""
    import pickle

    from facetrain.data.images import encode_jpeg
    from tests.data_helpers import face

    (tmp_path / "lfw.bin").write_bytes(pickle.dumps(([encode_jpeg(face(1))] * 2, [True])))
    (tmp_path / "people" / "someone").mkdir(parents=True)
    (tmp_path / "people" / "someone" / "a.jpg").write_bytes(encode_jpeg(face(2)))
    people = str(tmp_path / "people")
    return {"evaluate": ["--targets", "lfw", "--data-root", str(tmp_path)],
            "identify": ["--gallery", people, "--probe", people, "--no-cache"],
            "extract_features": ["--images", people, "--output", str(tmp_path / "f.npy")],
            "export_onnx": ["--output", str(tmp_path / "m.onnx")],
            "import_weights": ["--output", str(tmp_path / "imported.pt")],
            "export_weights": ["--format", "safetensors", "--output", str(tmp_path / "exported.safetensors")]}


def test_a_bad_model_file_is_one_line_in_every_script(capsys, tmp_path, checkpoint):
    """Random bytes, text, an empty file, a zip of something else, a truncated checkpoint, and checkpoints whose
    config asks for a 4 TiB layer or whose tensor repeats one stored value: one line, exit 2, in each script."""
    import torch

    bad = {name: path for name, (path, _) in not_weight_files(tmp_path / "bad", checkpoint).items()}
    bad["2**31-d"] = edited_checkpoint(checkpoint, tmp_path / "huge.pt", set_config("embedding_size", value=2**31))
    bad["zero stride"] = edited_checkpoint(checkpoint, tmp_path / "stride.pt", lambda state: state["backbone"].__setitem__(
        "fc.weight", torch.zeros(1).as_strided((2**20, 2**20), (0, 0))))
    for script, rest in model_scripts(tmp_path).items():
        for name, path in bad.items():
            line = one_line(capsys, script, [str(path), *rest])
            assert str(path) in line, (script, name, line)
    assert not (tmp_path / "imported.pt").exists() and not (tmp_path / "exported.safetensors").exists()


def test_a_missing_checkpoint_is_named_before_other_missing_input(capsys, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"
    result = subprocess.run([sys.executable, str(script), "/missing/ckpt.pt", "--targets", "lfw"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "evaluate: error: /missing/ckpt.pt does not exist; pass a checkpoint file (.pt) or a run directory"], result.stderr
    missing = str(tmp_path / "none")
    for script, rest in {"eval_ijb": ["--ijb-root", missing, "--target", "IJBC"],
                         "identify": ["--gallery", missing, "--probe", missing],
                         "extract_features": ["--images", missing, "--output", str(tmp_path / "f.npy")]}.items():
        assert "/missing/ckpt.pt does not exist" in one_line(capsys, script, ["/missing/ckpt.pt", *rest]), script


def test_an_export_reads_back_whatever_its_name(capsys, tmp_path, checkpoint):
    """A safetensors export named .pt reads back (its format is told by its content), is imported by
    import_weights.py and evaluated by load_backbone, and is readable by all like the other exports."""
    import facetrain

    assert load_script("export_weights").main([str(checkpoint), "--format", "safetensors", "--output",
                                               str(tmp_path / "x.pt")]) == 0
    assert "reads back identically" in capsys.readouterr().out
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o644
    assert load_script("import_weights").main([str(tmp_path / "x.pt"), "--output", str(tmp_path / "again.pt")]) == 0
    original, exported = facetrain.load_backbone(checkpoint), facetrain.load_backbone(tmp_path / "x.pt")
    assert all(a.equal(b) for a, b in zip(original.state_dict().values(), exported.state_dict().values()))
