"""scripts/convert_to_rec.py round trips, and training on a converted folder through the CLI."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from facetrain.data import RecordDataset
from facetrain.data.images import encode_jpeg
from facetrain.data.recordio import unpack_record
from facetrain.data.verification_bin import save_verification_bin
from tests.conftest import only_run_dir
from tests.data_helpers import face, write_image_folder

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_to_rec.py"
spec = importlib.util.spec_from_file_location("convert_to_rec", SCRIPT)
convert_to_rec = sys.modules["convert_to_rec"] = importlib.util.module_from_spec(spec)  # worker processes import it
spec.loader.exec_module(convert_to_rec)


def convert(*args: object) -> int:
    return convert_to_rec.main([str(a) for a in args] + ["--no-progress"])


def contents(dataset: RecordDataset) -> list[tuple[bytes, int]]:
    return sorted((dataset[i][0].numpy().tobytes(), dataset[i][1]) for i in range(len(dataset)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("faces")
    return root, write_image_folder(root, [3, 2, 4])


def test_folder_to_insightface_rec_keeps_pixels_and_labels(folder, tmp_path):
    root, written = folder
    assert convert(root, tmp_path / "rec", "--workers", 2) == 0
    dataset = RecordDataset(tmp_path / "rec")
    assert len(dataset) == 9 and dataset.num_classes == 3
    assert (tmp_path / "rec" / "property").read_text() == "3,112,112\n"
    for index, (pixels, label) in enumerate(v for _, v in sorted(written.items())):
        image, got = dataset[index]
        assert got == label and torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
    header, _ = unpack_record(dataset.reader.read(0))
    assert header.label.tolist() == [10, 13]
    assert [unpack_record(dataset.reader.read(k))[0].label.tolist() for k in (10, 11, 12)] == [[1, 4], [4, 6], [6, 10]]
    assert unpack_record(dataset.reader.read(1))[1] == (root / "id_000" / "0.jpg").read_bytes()  # stored byte for byte


def test_list_file_shuffle_and_back(folder, tmp_path):
    root, _ = folder
    lines = [f"{p} {label}" for p, label in (("id_001/1.jpg", 7), ("id_000/0.jpg", 2), ("id_002/3.jpg", 7))]
    (root.parent / "faces.lst").write_text("\n".join(f"{root.name}/{line}" for line in lines) + "\n")
    assert convert(root.parent / "faces.lst", tmp_path / "shuffled", "--shuffle", "--seed", 3, "--workers", 1) == 0
    shuffled = RecordDataset(tmp_path / "shuffled")
    assert len(shuffled.reader) == 3 and shuffled.num_classes == 8  # header-less: every key an image
    assert unpack_record(shuffled.reader.read(0))[0].flag == 0
    assert convert(tmp_path / "shuffled", tmp_path / "grouped") == 0  # RecordIO -> insightface layout
    grouped = RecordDataset(tmp_path / "grouped")
    assert [grouped.label_of(i) for i in range(3)] == [2, 7, 7] and contents(grouped) == contents(shuffled)


def test_unreadable_images_are_skipped_and_resized_ones_reencoded(tmp_path, capsys):
    write_image_folder(tmp_path / "src", [2, 1])
    (tmp_path / "src" / "id_000" / "1.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "src" / "id_001" / "big.jpg").write_bytes(encode_jpeg(face(9, size=150)))
    assert convert(tmp_path / "src", tmp_path / "rec", "--workers", 1) == 0
    assert "skipping image 1:" in capsys.readouterr().err
    dataset = RecordDataset(tmp_path / "rec")
    assert len(dataset) == 3 and [dataset.label_of(i) for i in range(3)] == [0, 1, 1]
    assert dataset[2][0].shape == (3, 112, 112)


def test_reindex_rebuilds_the_index(folder, tmp_path):
    root, _ = folder
    convert(root, tmp_path / "rec", "--workers", 1)
    original = (tmp_path / "rec" / "train.idx").read_text()
    (tmp_path / "rec" / "train.idx").unlink()
    assert convert("--reindex", tmp_path / "rec") == 0
    assert (tmp_path / "rec" / "train.idx").read_text() == original


def test_convert_refuses_to_overwrite_its_source(folder, capsys):
    root, _ = folder
    assert convert(root, root) == 2 and "is the source folder" in capsys.readouterr().err


def test_train_on_a_converted_folder(folder, tmp_path, run_cli):
    root, written = folder
    convert(root, tmp_path / "rec", "--workers", 1)
    images = [encode_jpeg(face(v)) for v in range(40)]
    save_verification_bin(tmp_path / "rec" / "lfw.bin", images, [i % 2 == 0 for i in range(20)])
    common = ["dataset=rec", f"dataset.root={tmp_path / 'rec'}", "trainer.max_steps=2", "trainer.batch_size=4",
              "trainer.num_workers=2", "trainer.progress_bar=false", "checkpoint.every_steps=0", "eval.at_start=false",
              "eval.targets=[lfw]", "dataset.augment.color_jitter=0.5"]
    result = run_cli(*common)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((only_run_dir(tmp_path / "outputs") / "metrics.json").read_text())
    assert metrics["step"] == 2 and "lfw" in metrics["val"]
    result = run_cli(*common, "dataset.num_classes=7")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"facetrain: error: dataset.num_classes=7 but {tmp_path / 'rec'} holds 3 classes; "
        "set dataset.num_classes=3 (or null to infer it)")
