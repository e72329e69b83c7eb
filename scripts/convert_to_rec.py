"""Convert face images to insightface's RecordIO layout (``train.rec``, ``train.idx``, ``property``).

    python scripts/convert_to_rec.py SRC DST [--workers N] [--shuffle] [--size 112] [--quality 95]
    python scripts/convert_to_rec.py --reindex ROOT

SRC is a folder of identity folders (``SRC/<identity>/<image>``), a list file of ``path label``
lines, or a RecordIO folder. By default DST gets the header record, the images grouped by label and
one record per identity, as insightface writes MS1Mv3; ``--shuffle`` writes a header-less copy in a
random order instead. Images are decoded (to check them) in parallel processes; JPEGs already
``size x size`` are stored byte for byte, others are resized and re-encoded. Unreadable images are
skipped with a warning. ``--reindex`` rebuilds a lost ``train.idx`` from ``train.rec``.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm import tqdm

from facetrain.cli import run_script, script_parser
from facetrain.data.datasets import RecordDataset
from facetrain.data.images import decode_image, encode_jpeg, resize_square
from facetrain.data.imagefolder import list_images
from facetrain.data.recordio import pack_record, scan_records, unpack_record, write_insightface_folder, write_property, write_records
from facetrain.errors import DataError
from facetrain.plural import counted

Payload = tuple[Optional[bytes], str]  # (encoded image, or None and why it was skipped)


def prepare_image(path: str, size: int, quality: int, reencode: bool) -> Payload:
    """The JPEG bytes to store for the image file at ``path`` (decoded once to check it)."""
    try:
        data = Path(path).read_bytes()
        image = decode_image(data, path)
    except (OSError, DataError) as exc:
        return None, str(exc)
    if not reencode and data[:2] == b"\xff\xd8" and image.shape[:2] == (size, size):
        return data, ""
    return encode_jpeg(resize_square(image, size), quality), ""


class ImageSource:
    """Image files (identity folders or a list file), prepared in ``workers`` processes."""

    def __init__(self, src: Path, size: int, quality: int, reencode: bool, workers: int) -> None:
        images = list_images(src)
        self.paths = [str(images.base / p) for p in images.paths]
        self.labels = images.labels
        self.prepare = functools.partial(prepare_image, size=size, quality=quality, reencode=reencode)
        self.workers = workers

    def payloads(self, order: np.ndarray) -> Iterator[Payload]:
        paths = (self.paths[i] for i in order)
        if self.workers <= 1:
            yield from map(self.prepare, paths)
            return
        with Pool(self.workers) as pool:
            yield from pool.imap(self.prepare, paths, chunksize=64)


class RecordSource:
    """The images of a RecordIO folder, copied without decoding."""

    def __init__(self, src: Path) -> None:
        self.dataset = RecordDataset(src)
        self.labels = np.asarray([self.dataset.label_of(i) for i in range(len(self.dataset))], dtype=np.int64)

    def payloads(self, order: np.ndarray) -> Iterator[Payload]:
        for index in order:
            try:
                yield unpack_record(self.dataset.reader.read(int(self.dataset.keys[index])))[1], ""
            except DataError as exc:
                yield None, str(exc)


def convert(src: Path, dst: Path, size: int = 112, quality: int = 95, reencode: bool = False, shuffle: bool = False,
            seed: int = 0, workers: int = 0, progress: bool = True) -> int:
    """Write ``dst/train.rec``, ``train.idx`` and ``property`` from ``src``; returns the image count."""
    if dst.resolve() == src.resolve():
        raise DataError(f"{dst} is the source folder", "write the converted copy to another folder")
    is_rec = (src / "train.rec").is_file()
    source = RecordSource(src) if is_rec else ImageSource(src, size, quality, reencode, workers or os.cpu_count() or 1)
    labels = source.labels
    order = np.random.default_rng(seed).permutation(len(labels)) if shuffle else np.argsort(labels, kind="stable")
    payloads = tqdm(source.payloads(order), total=len(order), desc="convert", unit="img", disable=not progress)
    skipped = []

    def readable() -> Iterator[tuple[int, bytes]]:
        for index, (payload, why) in zip(order, payloads):
            if payload is None:
                skipped.append(why)
                tqdm.write(f"convert_to_rec: skipping image {index}: {why}", file=sys.stderr)
                continue
            yield int(labels[index]), payload

    dst.mkdir(parents=True, exist_ok=True)
    num_classes = int(labels.max()) + 1
    if shuffle:
        records = ((key, pack_record(float(label), payload, id=key)) for key, (label, payload) in enumerate(readable()))
        write_records(dst / "train.rec", dst / "train.idx", records)
        write_property(dst, num_classes, size)
    else:
        write_insightface_folder(dst, readable(), num_classes, size)
    written = len(labels) - len(skipped)
    print(f"convert_to_rec: wrote {counted(written, 'image')} of {counted(num_classes, 'identity', 'identities')} to {dst}"
          + (f" ({len(skipped)} unreadable images skipped)" if skipped else ""), file=sys.stderr)
    return written


def reindex(root: Path) -> int:
    """Rebuild ``root/train.idx`` from ``root/train.rec`` (keys 0, 1, ... in file order)."""
    tmp = root / "train.idx.tmp"
    with open(tmp, "w") as f:
        count = 0
        for count, (offset, _) in enumerate(tqdm(scan_records(root / "train.rec"), desc="reindex", unit="rec"), start=1):
            f.write(f"{count - 1}\t{offset}\n")
    os.replace(tmp, root / "train.idx")
    print(f"convert_to_rec: indexed {counted(count, 'record')} in {root / 'train.idx'}", file=sys.stderr)
    return count


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("convert_to_rec", __doc__)
    parser.add_argument("src", type=Path, nargs="?", help="identity folders, a 'path label' list file, or a RecordIO folder")
    parser.add_argument("dst", type=Path, nargs="?", help="output folder")
    parser.add_argument("--reindex", type=Path, metavar="ROOT", help="rebuild ROOT/train.idx from ROOT/train.rec")
    parser.add_argument("--shuffle", action="store_true", help="write a header-less copy in a random order")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle")
    parser.add_argument("--size", type=int, default=112, help="image side; other sizes are resized")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    parser.add_argument("--reencode", action="store_true", help="re-encode every image, not only resized ones")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU core)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    if args.reindex is None and (args.src is None or args.dst is None):
        parser.error("give SRC and DST, or --reindex ROOT")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        if args.reindex is not None:
            reindex(args.reindex)
        else:
            convert(args.src, args.dst, args.size, args.quality, args.reencode, args.shuffle, args.seed, args.workers,
                    args.progress)

    return run_script("convert_to_rec", work)


if __name__ == "__main__":
    sys.exit(main())
