"""Image folders and list files as training data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facetrain.data import ImageFolderDataset
from facetrain.data.images import decode_image, encode_jpeg
from facetrain.data.imagefolder import PackedStrings
from facetrain.errors import DataError
from tests.data_helpers import face, write_image_folder


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)


def test_identity_folders_sorted_by_name(tmp_path):
    written = write_image_folder(tmp_path, [2, 3, 1])
    (tmp_path / "id_001" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()  # no images: no label
    dataset = ImageFolderDataset(tmp_path)
    assert len(dataset) == 6 and dataset.num_classes == 3 and dataset.root == tmp_path
    for index, (relative, (pixels, label)) in enumerate(sorted(written.items())):
        image, got = dataset[index]
        assert got == label and dataset.label_of(index) == label and torch.equal(image, chw(pixels))
        assert dataset.where(index) == str(tmp_path / relative)


def test_list_file_with_relative_absolute_and_resized_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a b.jpg").write_bytes(encode_jpeg(face(1)))
    (tmp_path / "big.png").write_bytes(_png(face(2, size=224)))
    lines = ["# path label", "imgs/a b.jpg 4", "", f"{tmp_path / 'big.png'} 0"]
    (tmp_path / "train.lst").write_text("\n".join(lines) + "\n")
    dataset = ImageFolderDataset(tmp_path / "train.lst")
    assert len(dataset) == 2 and dataset.num_classes == 5 and dataset.root == tmp_path
    assert dataset[0][1] == 4 and torch.equal(dataset[0][0], chw(decode_image(encode_jpeg(face(1)))))
    resized, label = dataset[1]
    assert label == 0 and resized.shape == (3, 112, 112)
    assert (resized.float() - chw(face(2)).float()).abs().mean() < 3  # area-resized 224 -> 112


def _png(image: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()


@pytest.mark.parametrize(("text", "expected"), [
    ("a.jpg 0\nb.jpg\n", r"train.lst:2 is not 'path label'"),
    ("a.jpg -1\n", r"train.lst:1 is not 'path label'"),
    ("# nothing\n", "names no images"),
])
def test_bad_list_files(tmp_path, text, expected):
    (tmp_path / "train.lst").write_text(text)
    with pytest.raises(DataError, match=expected):
        ImageFolderDataset(tmp_path / "train.lst")


def test_missing_root_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist; set dataset.root="):
        ImageFolderDataset(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no images in identity folders"):
        ImageFolderDataset(tmp_path)


def test_missing_image_is_skipped(tmp_path, caplog):
    write_image_folder(tmp_path, [2, 2])
    dataset = ImageFolderDataset(tmp_path, max_bad_fraction=0.5)
    (tmp_path / "id_000" / "0.jpg").unlink()
    _, label = dataset[0]
    assert label == 0 and dataset.bad_count == 1 and "0.jpg cannot be read" in caplog.text


def test_packed_strings():
    strings = ["a", "", "идентичность/1.jpg", "x" * 300]
    packed = PackedStrings(strings)
    assert len(packed) == 4 and [packed[i] for i in range(4)] == strings


# ---- unreadable files, found at start ---------------------------------------------------------------
def _folder_with_broken_files(root):
    write_image_folder(root, [6, 6, 6, 6, 6])
    good = (root / "id_000" / "0.jpg").read_bytes()
    (root / "id_001" / "broken.jpg").write_bytes(good[:300])  # truncated
    (root / "id_003" / "text.jpg").write_text("not an image")
    return [str(root / "id_001" / "broken.jpg"), str(root / "id_003" / "text.jpg")]


def test_unreadable_files_are_named_all_at_once_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("FACETRAIN_CACHE", str(tmp_path / "cache"))
    bad = _folder_with_broken_files(tmp_path / "faces")
    with pytest.raises(DataError) as caught:
        ImageFolderDataset(tmp_path / "faces")
    message = str(caught.value)
    assert message.startswith(f"2 of 32 images under {tmp_path / 'faces'} cannot be read: {bad[0]}, {bad[1]}")
    assert message.endswith("raise dataset.max_bad_fraction to train without them")
    dataset = ImageFolderDataset(tmp_path / "faces", max_bad_fraction=0.1)  # within the fraction: left out
    assert len(dataset) == 30 and all(dataset.where(i) not in bad for i in range(len(dataset)))


def test_the_check_is_remembered_by_size_and_modification_time(tmp_path, monkeypatch):
    import facetrain.data.readability as readability

    monkeypatch.setenv("FACETRAIN_CACHE", str(tmp_path / "cache"))
    bad = _folder_with_broken_files(tmp_path / "faces")
    ImageFolderDataset(tmp_path / "faces", max_bad_fraction=0.1)
    decoded = []
    real = readability._readable
    monkeypatch.setattr(readability, "_readable", lambda path: decoded.append(path) or real(path))
    assert len(ImageFolderDataset(tmp_path / "faces", max_bad_fraction=0.1)) == 30 and decoded == []
    (tmp_path / "faces" / "id_001" / "broken.jpg").write_bytes(encode_jpeg(face(99)))  # repaired: new size and time
    assert len(ImageFolderDataset(tmp_path / "faces", max_bad_fraction=0.1)) == 31 and decoded == [bad[0]]


def test_a_data_error_in_a_worker_mid_run_ends_the_process_with_one_line(run_cli, tmp_path):
    """The DataLoader's persistent workers ignore SIGTERM (to finish a step on preemption): a run that stops on
    an error must stop them itself, or the process waits for them forever at exit."""
    from facetrain.data.recordio import read_index, write_insightface_folder
    from tests.test_data import corrupt

    root = tmp_path / "rec"
    write_insightface_folder(root, [(i // 4, encode_jpeg(face(i))) for i in range(32)], num_classes=8)
    corrupt(root, read_index(root / "train.idx")[1], 20)
    result = run_cli("dataset=rec", f"dataset.root={root}", "eval.targets=[]", "trainer.batch_size=8",
                     "trainer.max_steps=8", "trainer.num_workers=1", "trainer.progress_bar=false", timeout=120)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("facetrain: error: 1 of 32 samples are unreadable, more than dataset.max_bad_fraction"), last
