"""Build an insightface verification ``.bin`` from a pair list, so that your own pairs become an ``eval.targets``
entry of training (and a ``--targets`` entry of scripts/evaluate.py).

    python scripts/make_bin.py PAIRS.txt --images DIR --output my_pairs.bin [--align [DETECTION OPTIONS]]

``PAIRS.txt`` is LFW's ``pairs.txt`` or plain ``path1 path2 same`` lines (:mod:`facetrain.eval.pairs`) over
the aligned faces in ``--images`` (default: the list's folder). The ``.bin`` is what insightface writes: a
pickle of ``(encoded images, issame list)``, two images per pair in list order. A 112x112 JPEG or PNG is
stored byte for byte; any other image is decoded, resized to 112x112 and stored as PNG (lossless). Every image
is decoded before anything is written, and the file appears only once complete. With ``--align`` the images
are raw photos: each is stored as the PNG of its face, found and cropped as scripts/align.py crops it (a photo
without a face stops it, naming the photo).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from facetrain.align.options import add_align_options, photo_aligner
from facetrain.align.photos import PhotoAligner
from facetrain.cli import run_script, script_parser
from facetrain.data.images import decode_image, encode_png, resize_square
from facetrain.data.verification_bin import save_verification_bin
from facetrain.files import atomic_write
from facetrain.errors import DataError
from facetrain.eval.pairs import read_pairs

SIZE = 112
STORED_AS_IS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG and PNG signatures


def bin_entry(path: Path, aligner: Optional[PhotoAligner] = None) -> bytes:
    """The bytes to store for one image: the file itself if it is a 112x112 JPEG/PNG, else a resized PNG;
    with an ``aligner``, the PNG of the photo's aligned face."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc})", "restore the image or remove its pair") from None
    if aligner is not None:
        image = aligner.decode(data, str(path))
        try:
            return encode_png(aligner(image))
        except DataError as exc:
            raise DataError(f"{path}: {exc.problem}", f"remove its pair from the list, or {exc.fix}") from None
    image = decode_image(data, str(path))
    if image.shape[:2] == (SIZE, SIZE) and data.startswith(STORED_AS_IS):
        return data
    return encode_png(resize_square(image, SIZE))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser("make_bin", __doc__)
    parser.add_argument("pairs", type=Path, help="LFW pairs.txt or a list of 'path1 path2 same' lines")
    parser.add_argument("--images", type=Path, help="folder of the list's images (default: the list's folder)")
    parser.add_argument("--output", type=Path, required=True, help="the .bin file to write")
    add_align_options(parser)
    args = parser.parse_args(argv)
    if args.output.suffix != ".bin":
        parser.error(f"--output {args.output} should end in .bin (training finds targets as <name>.bin)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        pairs = read_pairs(args.pairs, args.images if args.images is not None else args.pairs.parent)
        entries, seen, aligner = [], {}, photo_aligner(args)
        for name in pairs.names:  # an image named by several pairs is read once
            if name not in seen:
                seen[name] = bin_entry(pairs.base / name, aligner)
            entries.append(seen[name])
        with atomic_write(args.output) as f:
            save_verification_bin(f, entries, pairs.issame.tolist())
        print(f"make_bin: wrote {args.output}: {len(pairs.issame)} pairs ({int(pairs.issame.sum())} same), "
              f"{len(seen)} images", file=sys.stderr)

    return run_script("make_bin", work)


if __name__ == "__main__":
    sys.exit(main())
