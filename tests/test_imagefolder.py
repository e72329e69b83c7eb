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
