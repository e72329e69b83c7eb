"""RecordIO, verification .bin and synthetic data, on files written by the formats' own rules."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from facetrain.data import RecordDataset, load_verification_bin
from facetrain.data.images import encode_jpeg
from facetrain.data.recordio import MAGIC, RecordReader, encode_frames, pack_record, unpack_record, write_records
from facetrain.data.synthetic import SyntheticSpec, build_synthetic, render_identity
from facetrain.errors import DataError

MAGIC_BYTES = struct.pack("<I", MAGIC)


def test_frame_layout_by_hand():
    payload = b"abcdefg"  # 7 bytes -> one frame, cflag 0, padded to 8
    assert encode_frames(payload) == MAGIC_BYTES + struct.pack("<I", 7) + payload + b"\x00"


def test_magic_inside_payload_splits_the_record():
    payload = b"AAAA" + MAGIC_BYTES + b"BBBBBB" + MAGIC_BYTES + b"C"  # magic at offset 4 (aligned) and 14 (not)
    frames = encode_frames(payload)
    expected = (MAGIC_BYTES + struct.pack("<I", (1 << 29) | 4) + b"AAAA"
                + MAGIC_BYTES + struct.pack("<I", (3 << 29) | 11) + payload[8:] + b"\x00")
    assert frames == expected
    aligned = b"AAAA" + MAGIC_BYTES + b"BBBB" + MAGIC_BYTES + b"CC"
    three = encode_frames(aligned)
    assert three == (MAGIC_BYTES + struct.pack("<I", (1 << 29) | 4) + b"AAAA"
                     + MAGIC_BYTES + struct.pack("<I", (2 << 29) | 4) + b"BBBB"
                     + MAGIC_BYTES + struct.pack("<I", (3 << 29) | 2) + b"CC\x00\x00")


def test_reader_rejoins_split_records(tmp_path):
    records = [b"plain", b"AAAA" + MAGIC_BYTES + b"BBBB" + MAGIC_BYTES + b"CC", MAGIC_BYTES * 3, b""]
    write_records(tmp_path / "x.rec", tmp_path / "x.idx", enumerate(records))
    reader = RecordReader(tmp_path / "x.rec", tmp_path / "x.idx")
    assert [reader.read(k) for k in range(len(records))] == records


def test_irheader_scalar_and_vector_labels():
    header, payload = unpack_record(pack_record(7.0, b"jpeg", id=3))
    assert (header.flag, header.label, header.id, payload) == (0, 7.0, 3, b"jpeg")
    raw = struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array([5, 9], "<f4").tobytes() + b"img"
    header, payload = unpack_record(raw)
    assert header.flag == 2 and header.label.tolist() == [5.0, 9.0] and payload == b"img"


def _image(value: int) -> np.ndarray:
    return np.full((112, 112, 3), value, dtype=np.uint8)


def test_record_dataset_headerless_and_vector_labels(tmp_path):
    # key 0 must have a scalar label: a vector label there marks insightface's header record
    records = [(0, pack_record(1.0, encode_jpeg(_image(200)))), (1, pack_record([2.0, 0.5], encode_jpeg(_image(40))))]
    write_records(tmp_path / "train.rec", tmp_path / "train.idx", records)
    dataset = RecordDataset(tmp_path)
    assert len(dataset) == 2 and dataset.num_classes == 3
    image, label = dataset[1]
    assert image.shape == (3, 112, 112) and label == 2 and abs(int(image.float().mean()) - 40) <= 2


def test_corrupt_record_is_a_data_error(tmp_path):
    write_records(tmp_path / "train.rec", tmp_path / "train.idx", [(0, pack_record(0.0, b"x" * 50))])
    data = bytearray((tmp_path / "train.rec").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "train.rec").write_bytes(bytes(data))
    with pytest.raises(DataError, match="bad magic"):
        RecordReader(tmp_path / "train.rec", tmp_path / "train.idx").read(0)


def test_verification_bin_python2_style_pickle(tmp_path):
    images = [encode_jpeg(_image(v)) for v in (10, 10, 90, 200)]
    with open(tmp_path / "lfw.bin", "wb") as f:  # protocol 2 + bytes, as Python 2 wrote them
        pickle.dump((images, [True, False]), f, protocol=2)
    arrays, issame = load_verification_bin(tmp_path / "lfw.bin")
    assert arrays.shape == (4, 112, 112, 3) and arrays.dtype == np.uint8 and issame.tolist() == [True, False]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    spec = SyntheticSpec(num_classes=6, images_per_class=4, val_identities=4, val_images_per_identity=3, val_pairs=20, seed=3)
    root = tmp_path_factory.mktemp("syn") / "data"
    build_synthetic(spec, root, workers=1)
    return root


def test_synthetic_is_insightface_layout(synthetic_root):
    dataset = RecordDataset(synthetic_root)
    assert len(dataset) == 24 and dataset.num_classes == 6
    assert [dataset.label_of(i) for i in range(24)] == [i // 4 for i in range(24)]
    header, _ = unpack_record(dataset.reader.read(0))
    assert header.flag == 2 and header.label.tolist() == [25.0, 31.0]
    identity_range, _ = unpack_record(dataset.reader.read(25 + 2))
    assert identity_range.label.tolist() == [9.0, 13.0]
    images, issame = load_verification_bin(synthetic_root / "synthetic_val.bin")
    assert images.shape == (40, 112, 112, 3) and issame.sum() == 10


def test_synthetic_is_deterministic_and_splits_disjoint():
    assert render_identity(0, 0, 5, 2) == render_identity(0, 0, 5, 2)
    assert render_identity(0, 0, 5, 1) != render_identity(0, 1, 5, 1)
