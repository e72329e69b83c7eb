"""RecordIO, verification .bin and synthetic data, on files written by the formats' own rules."""
from __future__ import annotations

import logging
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facetrain.data import RecordDataset, load_verification_bin, resolve_targets
from facetrain.data.datasets import BadDataError
from facetrain.data.images import decode_image, encode_jpeg
from facetrain.data.recordio import (
    RecordReader, encode_frames, pack_record, read_index, scan_records, unpack_record, write_insightface_folder, write_records,
)
from facetrain.data.synthetic import SyntheticSpec, build_synthetic, render_identity
from facetrain.errors import DataError
from tests.data_helpers import MAGIC_BYTES, face, irheader, jpeg_with_aligned_magic, write_rec_by_hand


# ---- framing --------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("records", [
    [b"plain", b"AAAA" + MAGIC_BYTES + b"BBBB" + MAGIC_BYTES + b"CC", MAGIC_BYTES * 3, b""],
    [b"x" + MAGIC_BYTES + b"yyy" + MAGIC_BYTES, MAGIC_BYTES + b"abcdef" + MAGIC_BYTES],  # unaligned + aligned magics
])
def test_reader_rejoins_hand_framed_records_and_writer_agrees(tmp_path, records):
    write_rec_by_hand(tmp_path / "hand", records)
    write_records(tmp_path / "ours.rec", tmp_path / "ours.idx", enumerate(records))
    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "hand" / "train.rec").read_bytes()
    reader = RecordReader(tmp_path / "hand" / "train.rec", tmp_path / "hand" / "train.idx")
    assert [reader.read(k) for k in range(len(records))] == records
    assert [record for _, record in scan_records(tmp_path / "hand" / "train.rec")] == records


def test_irheader_scalar_and_vector_labels():
    header, payload = unpack_record(pack_record(7.0, b"jpeg", id=3))
    assert (header.flag, header.label, header.id, payload) == (0, 7.0, 3, b"jpeg")
    header, payload = unpack_record(irheader([5, 9]) + b"img")
    assert header.flag == 2 and header.label.tolist() == [5.0, 9.0] and payload == b"img" and header.class_id == 5
    with pytest.raises(DataError, match="shorter than its header's 3 labels"):
        unpack_record(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\x00" * 8)


# ---- insightface layout, built by hand ------------------------------------------------------------------
def hand_built_insightface(root, property_line="2,112,112"):
    """Header + 3 images (identity 0: keys 1-2, identity 1: key 3) + 2 identity records. Image 2
    has a multi-float label and the magic 4-aligned inside its JPEG, so its record is split."""
    images = [face(1), face(2), face(3)]
    records = [
        irheader([4, 6]),
        irheader(0.0, 1) + encode_jpeg(images[0]),
        irheader([0.0, 0.5, 7.0], 2) + jpeg_with_aligned_magic(images[1], header_size=24 + 12),
        irheader(1.0, 3) + encode_jpeg(images[2]),
        irheader([1, 3]),
        irheader([3, 4]),
    ]
    offsets = write_rec_by_hand(root, records)
    if property_line:
        (root / "property").write_text(property_line + "\n")
    return [decode_image(encode_jpeg(image)) for image in images], offsets


def test_record_dataset_reads_hand_built_insightface_folder(tmp_path):
    expected, _ = hand_built_insightface(tmp_path)
    assert (tmp_path / "train.rec").read_bytes().count(MAGIC_BYTES) == 7  # 6 records, one in two frames
    dataset = RecordDataset(tmp_path)
    assert len(dataset) == 3 and dataset.num_classes == 2
    assert [dataset.label_of(i) for i in range(3)] == [0, 0, 1]
    for i in range(3):
        image, label = dataset[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 112, 112) and label == [0, 0, 1][i]
        assert torch.equal(image, torch.from_numpy(expected[i]).permute(2, 0, 1))


def test_record_dataset_header_less_vector_labels_and_no_property(tmp_path, caplog):
    records = [irheader(1.0) + encode_jpeg(face(200)), irheader([2.0, 0.5]) + encode_jpeg(face(40))]
    write_rec_by_hand(tmp_path, records, keys=[0, 5])  # key 0 has a scalar label: not a header
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        dataset = RecordDataset(tmp_path)
    assert len(dataset) == 2 and dataset.num_classes == 3
    assert "property is missing: inferred 3 classes" in caplog.text and "echo 3,112,112 >" in caplog.text
    image, label = dataset[1]
    assert label == 2 and torch.equal(image, torch.from_numpy(decode_image(encode_jpeg(face(40)))).permute(2, 0, 1))


def test_writer_matches_the_hand_built_layout(tmp_path):
    images = [encode_jpeg(face(v)) for v in range(3)]
    write_insightface_folder(tmp_path / "ours", [(0, images[0]), (0, images[1]), (1, images[2])], num_classes=2)
    write_rec_by_hand(tmp_path / "hand", [irheader([4, 6]), irheader(0.0, 1) + images[0], irheader(0.0, 2) + images[1],
                                         irheader(1.0, 3) + images[2], irheader([1, 3]), irheader([3, 4])])
    for name in ("train.rec", "train.idx"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "hand" / name).read_bytes()
    assert (tmp_path / "ours" / "property").read_text() == "2,112,112\n"
    with pytest.raises(ValueError, match="not contiguous"):
        write_insightface_folder(tmp_path / "bad", [(0, b"a"), (1, b"b"), (0, b"c")], num_classes=2)


# ---- errors and bad data -------------------------------------------------------------------------------
def test_missing_or_malformed_files_say_which_and_how_to_fix(tmp_path):
    hand_built_insightface(tmp_path)
    (tmp_path / "train.idx").write_text("0\t0\n1\tx\n")
    with pytest.raises(DataError, match=r"train.idx:2 is not 'key<TAB>offset'.*--reindex"):
        RecordDataset(tmp_path)
    (tmp_path / "train.idx").unlink()
    with pytest.raises(DataError, match=r"train.idx does not exist; rebuild it with: python scripts/convert_to_rec.py --reindex"):
        RecordDataset(tmp_path)
    keys, offsets = read_index(_write(tmp_path / "x.idx", "3\t40\n1\t0\n"))
    assert keys.tolist() == [1, 3] and offsets.tolist() == [0, 40]


def _write(path, text):
    path.write_text(text)
    return path


def test_corrupt_and_truncated_records_name_file_and_offset(tmp_path):
    _, offsets = hand_built_insightface(tmp_path)
    data = bytearray((tmp_path / "train.rec").read_bytes())
    data[offsets[2]] ^= 0xFF
    (tmp_path / "train.rec").write_bytes(bytes(data[: offsets[3] + 20]))  # also cut record 3 short
    reader = RecordReader(tmp_path / "train.rec", tmp_path / "train.idx")
    with pytest.raises(DataError, match=rf"record 2 of .*train.rec: bad magic number at offset {offsets[2]}"):
        reader.read(2)
    with pytest.raises(DataError, match=rf"record 3 of .*train.rec: the record at offset {offsets[3]} runs past the end"):
        reader.read(3)


def corrupt(root, offsets, key):
    data = bytearray((root / "train.rec").read_bytes())
    data[offsets[key] + 8 + 24 + 100 : offsets[key] + 8 + 24 + 400] = b"\x00" * 300  # JPEG scan data zeroed
    data[offsets[key] + 8 + 24 : offsets[key] + 8 + 24 + 2] = b"no"  # and its SOI marker
    (root / "train.rec").write_bytes(bytes(data))


def test_bad_samples_are_skipped_warned_and_counted(tmp_path, caplog):
    expected, offsets = hand_built_insightface(tmp_path)
    corrupt(tmp_path, offsets, 1)
    dataset = RecordDataset(tmp_path, max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        image, label = dataset[0]
    assert "skipping unreadable sample 0 (1 so far)" in caplog.text
    assert f"record 1 of {tmp_path / 'train.rec'} (offset {offsets[1]}): image cannot be decoded" in caplog.text
    assert label == 0 and torch.equal(image, dataset[1][0])  # the next readable sample stands in
    assert dataset.bad_count == 1
    caplog.clear()
    dataset[0]
    assert caplog.text == ""  # warned once


def test_too_many_bad_samples_stop_with_one_line(tmp_path):
    _, offsets = hand_built_insightface(tmp_path)
    corrupt(tmp_path, offsets, 1)
    dataset = RecordDataset(tmp_path)  # default max_bad_fraction 0.001: one bad sample of 3 is too many
    loader = DataLoader(dataset, batch_size=3, num_workers=1)
    with pytest.raises(BadDataError) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("1 of 3 samples are unreadable, more than dataset.max_bad_fraction=0.001")
    assert f"offset {offsets[1]}" in message and message.endswith("raise dataset.max_bad_fraction")


def test_two_worker_loader_shares_bad_counts_and_gives_every_batch(tmp_path):
    root = tmp_path / "data"
    write_insightface_folder(root, [(i // 4, encode_jpeg(face(i))) for i in range(16)], num_classes=4)
    offsets = read_index(root / "train.idx")[1]
    corrupt(root, offsets, 5)
    dataset = RecordDataset(root, max_bad_fraction=0.1)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)
    for _ in range(2):
        batches = list(loader)
        labels = torch.cat([labels for _, labels in batches])
        assert len(batches) == 4 and labels.tolist() == [i // 4 for i in range(16)]
    assert dataset.bad_count == 1  # counted in a worker, seen here


# ---- verification sets -------------------------------------------------------------------------------
def python2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """The opcodes Python 2's ``pickle.dump((bins, issame), f, protocol=2)`` writes for ``str`` images."""
    out = b"\x80\x02]q\x00(" + b"".join(b"T" + struct.pack("<I", len(b)) + b for b in bins) + b"e]q\x01("
    return out + b"".join(b"\x88" if same else b"\x89" for same in issame) + b"e\x86q\x02."


def test_verification_bin_written_by_python2(tmp_path):
    images = [encode_jpeg(face(v)) for v in (10, 11, 90, 200)]
    (tmp_path / "lfw.bin").write_bytes(python2_pickle(images, [True, False]))
    with pytest.raises(UnicodeDecodeError):  # what a reader without encoding="bytes" meets
        pickle.loads((tmp_path / "lfw.bin").read_bytes())
    loaded = load_verification_bin(tmp_path / "lfw.bin")
    arrays, issame = loaded.pair_images(), loaded.issame
    assert arrays.shape == (4, 112, 112, 3) and arrays.dtype == np.uint8 and issame.tolist() == [True, False]
    assert np.array_equal(arrays[2], decode_image(images[2]))


def test_verification_bin_python3_arrays_and_encoded_arrays(tmp_path):
    raw = [face(v) for v in range(4)]
    entries = [raw[0], np.frombuffer(encode_jpeg(raw[1]), np.uint8), encode_jpeg(raw[2]), bytearray(encode_jpeg(raw[3]))]
    with open(tmp_path / "cfp_fp.bin", "wb") as f:
        pickle.dump((entries, np.array([False, True])), f)
    loaded = load_verification_bin(tmp_path / "cfp_fp.bin")
    arrays, issame = loaded.pair_images(), loaded.issame
    assert np.array_equal(arrays[0], raw[0]) and np.abs(arrays[1].astype(int) - raw[1]).mean() < 3
    assert issame.dtype == bool and issame.tolist() == [False, True]
    (tmp_path / "odd.bin").write_bytes(pickle.dumps((entries[:3], [True, False])))
    with pytest.raises(DataError, match="3 images for 2 pairs"):
        load_verification_bin(tmp_path / "odd.bin")


def test_targets_by_name_from_root_or_by_path(tmp_path):
    (tmp_path / "lfw.bin").write_bytes(b"")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "calfw.bin").write_bytes(b"")
    resolved = resolve_targets(["lfw", str(tmp_path / "other" / "calfw.bin")], tmp_path)
    assert resolved == {"lfw": tmp_path / "lfw.bin", "calfw": tmp_path / "other" / "calfw.bin"}
    with pytest.raises(DataError, match=r"'agedb_30' not found at .*agedb_30.bin \(.* has: lfw\)"):
        resolve_targets(["agedb_30"], tmp_path)


# ---- synthetic ---------------------------------------------------------------------------------------
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
    loaded = load_verification_bin(synthetic_root / "synthetic_val.bin")
    images, issame = loaded.pair_images(), loaded.issame
    assert images.shape == (40, 112, 112, 3) and issame.sum() == 10


def test_synthetic_is_deterministic_and_splits_disjoint():
    assert render_identity(0, 0, 5, 2) == render_identity(0, 0, 5, 2)
    assert render_identity(0, 0, 5, 1) != render_identity(0, 1, 5, 1)


def test_device_prefetcher_moves_every_batch():
    from facetrain.data.prefetch import DevicePrefetcher

    batches = [(torch.full((2, 3), i, dtype=torch.uint8), torch.tensor([i, i])) for i in range(3)]
    moved = list(DevicePrefetcher(batches, torch.device("cpu")))
    assert len(moved) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(moved, batches))
