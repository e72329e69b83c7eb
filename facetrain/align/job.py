"""Align a folder of photos into a mirrored folder of crops, on N worker processes, resumable.

Each worker has its own detector and handles whole photos: read, detect, choose the face, crop, write the
crop atomically. The main process appends each finished photo to the journal (:mod:`facetrain.align.journal`)
and at the end writes ``landmarks.txt`` and ``report.json`` (:mod:`facetrain.align.report`). A crop depends
only on its photo and the settings, so the output is the same for any number of workers, and for a run
killed and resumed.

With a :class:`Likeness` (``--pick model=CKPT``) there are two passes: photos with one face are cropped
and embedded as they come, photos with several faces wait; then each identity's centre is the mean of its
one-face embeddings, and each waiting photo keeps the face nearest it.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import cv2
import numpy as np
from tqdm import tqdm

from facetrain.align.choice import LIKENESS_RULE, POSITION_RULE, big_enough, central, identity_centre, most_alike
from facetrain.align.crop import crop
from facetrain.align.detectors import Detector, build_detector
from facetrain.align.faces import DetectorSettings, Face
from facetrain.align.journal import ALIGNED, NO_FACE, NOT_PICKED, TOO_SMALL, UNREADABLE, Journal, Record
from facetrain.align.model_file import YUNET_SHA256
from facetrain.align.report import write_outputs
from facetrain.align.template import BASE_SIZE, valid_size
from facetrain.align.tree import FORMATS, Photo, check_folders, list_photos
from facetrain.data.images import decode_photo, encode_jpeg, encode_png
from facetrain.files import atomic_write, remove_stale_temps
from facetrain.files import file_sha256
from facetrain.errors import ConfigError, DataError

JPEG_QUALITY = 95


@dataclass(frozen=True)
class Likeness:
    """``embed``: uint8 RGB 112x112 crops ``[N,112,112,3]`` -> embeddings ``[N, d]``; ``key`` names the model
    (it goes into the settings, so a resumed run must use the same one)."""

    embed: Callable[[np.ndarray], np.ndarray]
    key: str


@dataclass(frozen=True)
class AlignOptions:
    detector: str = "yunet"
    model: Optional[Path] = None  # yunet: another model file; scrfd: its model file; landmarks: the landmarks file
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    size: int = BASE_SIZE
    format: str = "jpg"
    workers: int = 1

    def __post_init__(self) -> None:
        if not valid_size(self.size):
            raise ConfigError(f"crop size {self.size} is not a multiple of 112 or 128", "pass e.g. --size 112 (or 224)")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown crop format '{self.format}'", f"choose one of: {', '.join(FORMATS)}")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers} is below 1", "pass --workers 1 or more")


@dataclass
class Outcome:
    """A worker's answer: the record, or for a photo with several faces under a Likeness (status ``""``)
    its faces and their 112x112 crops, which wait for the second pass."""

    record: Record
    faces: list[Face] = field(default_factory=list)
    crops: Optional[np.ndarray] = None
    embeddings: Optional[np.ndarray] = None


class PhotoWorker:
    """Aligns one photo at a time (one per worker process)."""

    def __init__(self, options: AlignOptions, source: Path, target: Path, pick: bool) -> None:
        self.detector = build_detector(options.detector, options.settings, options.model)
        self.options, self.source, self.target, self.pick = options, source, target, pick

    def align(self, photo: Photo) -> Outcome:
        image = read_photo(self.source / photo.name)
        if isinstance(image, str):
            return Outcome(Record(photo.name, UNREADABLE, image))
        found = self.detector.faces(image, photo.name)
        faces = big_enough(found, self.detector.min_face)
        if not found:
            return Outcome(Record(photo.name, NO_FACE, f"no face scores {self.detector.threshold:g} or more"))
        if not faces:
            return Outcome(Record(photo.name, TOO_SMALL, f"its largest face is {max(f.size for f in found):.0f} px, "
                                                          f"below the minimum face size {self.detector.min_face:g}"))
        if self.pick and len(faces) > 1:
            return Outcome(Record(photo.name, "", faces=len(faces)), faces, embedding_crops(image, faces))
        face = faces[0] if len(faces) == 1 else central(faces, image.shape)
        return Outcome(self.write(photo, image, face, len(faces), "only face" if len(faces) == 1 else "position"))

    def write(self, photo: Photo, image: np.ndarray, face: Face, faces: int, rule: str,
              similarity: Optional[float] = None) -> Record:
        """Crop ``face``, write it atomically, and return its record."""
        aligned = crop(image, face.points, self.options.size)
        data = encode_jpeg(aligned, JPEG_QUALITY) if self.options.format == "jpg" else encode_png(aligned)
        with atomic_write(self.target / photo.output) as f:
            f.write(data)
        return Record(photo.name, ALIGNED, faces=faces, points=face.points.reshape(10).tolist(), score=face.score,
                      rule=rule, similarity=similarity)


def read_photo(path: Path) -> np.ndarray | str:
    """The photo's pixels, or why it cannot be read."""
    try:
        return decode_photo(path.read_bytes(), str(path))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except DataError:
        return "cannot be decoded (corrupt, or not an image)"


def embedding_crops(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """The 112x112 crop of each face: the input of the embedding model."""
    return np.stack([crop(image, face.points, BASE_SIZE) for face in faces])


_worker: Optional[PhotoWorker] = None


def _start_worker(options: AlignOptions, source: Path, target: Path, pick: bool) -> None:
    global _worker
    cv2.setNumThreads(1)
    _worker = PhotoWorker(options, source, target, pick)


def _align_in_worker(photo: Photo) -> Outcome:
    return _worker.align(photo)


def run_settings(options: AlignOptions, detector: Detector, likeness: Optional[Likeness]) -> dict[str, Any]:
    """What the crops depend on (written in the journal and the report)."""
    model = YUNET_SHA256 if options.model is None else file_sha256(Path(options.model))
    detection = {} if detector.listed() is not None else {
        "input_size": options.settings.input_size, "min_face": detector.min_face, "score_threshold": detector.threshold}
    return {"detector": options.detector, "model_sha256": model, **detector.points_key(), **detection,
            "size": options.size, "format": options.format,
            "choice": "likeness " + likeness.key if likeness else "position"}


def align_folder(source: Path, target: Path, options: AlignOptions = AlignOptions(),
                 likeness: Optional[Likeness] = None, progress: bool = True) -> dict[str, Any]:
    """Align every photo below ``source`` into ``target`` (see the module's docstring); returns the report."""
    source, target = Path(source), Path(target)
    check_folders(source, target)
    main = PhotoWorker(options, source, target, likeness is not None)
    photos = list_photos(source, options.format)
    listed = main.detector.listed()
    if listed is not None:
        known = {p.name: p for p in photos}
        photos = [known.get(name) or missing_photo(name, options.format) for name in listed]
    if likeness is not None and any(not p.identity for p in photos):
        raise ConfigError(f"{source} holds photos outside identity folders", "--pick model=... needs <input>/<identity>/<photo>")
    if not photos:
        raise DataError(f"{source} holds no photos", "pass a folder of photos (.jpg, .png, .webp, ...) or of identity folders")
    target.mkdir(parents=True, exist_ok=True)
    settings = run_settings(options, main.detector, likeness)
    journal = Journal(target, settings)
    outputs = {p.name: p.output for p in photos}
    done = {name: r for name, r in journal.load().items()
            if name in outputs and (r.status != ALIGNED or (target / outputs[name]).is_file())}
    for folder in {(target / p.output).parent for p in photos}:
        if folder.is_dir():
            remove_stale_temps(folder)  # crops a kill left half written
    todo = [p for p in photos if p.name not in done]
    journal.open(done)
    try:
        pending = _first_pass(main, todo, options, source, target, likeness, journal, done, progress)
        if likeness is not None:
            _second_pass(main, photos, pending, likeness, journal, done, progress)
    finally:
        journal.close()
    records = [done[p.name] for p in photos]
    journal.open({r.photo: r for r in records})
    journal.close()
    return write_outputs(target, records, settings, LIKENESS_RULE if likeness else POSITION_RULE)


def missing_photo(name: str, suffix: str) -> Photo:
    """A photo a landmarks file names that is not in the folder (it is reported unreadable)."""
    return Photo(name, f"{os.path.splitext(name)[0]}.{suffix}")


def _outcomes(main: PhotoWorker, todo: list[Photo], options: AlignOptions, source: Path, target: Path,
              pick: bool) -> Iterator[Outcome]:
    """The outcome of each photo of ``todo``, in the order they finish."""
    workers = min(options.workers, len(todo))
    if workers <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            yield from (main.align(photo) for photo in todo)
        finally:
            cv2.setNumThreads(threads)
        return
    context = get_context("forkserver")  # workers forked from a fresh process: OpenCV's threads do not survive a fork
    context.set_forkserver_preload([__name__])
    with context.Pool(workers, _start_worker, (options, source, target, pick)) as pool:
        yield from pool.imap_unordered(_align_in_worker, todo, chunksize=1)


def _first_pass(main: PhotoWorker, todo: list[Photo], options: AlignOptions, source: Path, target: Path,
                likeness: Optional[Likeness], journal: Journal, done: dict[str, Record],
                progress: bool) -> list[Outcome]:
    """Align ``todo``, journaling each photo; with a Likeness, return the photos with several faces, their
    faces embedded (one photo per call, so that the numbers do not depend on the order photos finish in)."""
    pending = []
    with tqdm(total=len(todo), desc="align", unit="photo", disable=not progress, dynamic_ncols=True) as bar:
        for outcome in _outcomes(main, todo, options, source, target, likeness is not None):
            if outcome.record.status:
                journal.append(outcome.record)
                done[outcome.record.photo] = outcome.record
            else:
                outcome.embeddings, outcome.crops = likeness.embed(outcome.crops), None
                pending.append(outcome)
            bar.update()
    return pending


def _second_pass(main: PhotoWorker, photos: list[Photo], pending: list[Outcome], likeness: Likeness,
                 journal: Journal, done: dict[str, Record], progress: bool) -> None:
    """Crop in each waiting photo the face most like its identity's one-face photos."""
    by_name = {p.name: p for p in photos}
    waiting: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in pending:
        waiting[by_name[outcome.record.photo].identity].append(outcome)
    singles: dict[str, list[Photo]] = defaultdict(list)
    for record in done.values():
        if record.status == ALIGNED and record.faces == 1 and by_name[record.photo].identity in waiting:
            singles[by_name[record.photo].identity].append(by_name[record.photo])
    with tqdm(total=len(pending), desc="pick", unit="photo", disable=not progress, dynamic_ncols=True) as bar:
        for identity in sorted(waiting):
            centre = _identity_centre(main, singles[identity], done, likeness)
            for outcome in sorted(waiting[identity], key=lambda o: o.record.photo):
                photo, count = by_name[outcome.record.photo], outcome.record.faces
                image = read_photo(main.source / photo.name)
                if centre is None or isinstance(image, str):
                    reason = (f"{count} faces, and no photo of {identity} with one face to compare them with"
                              if centre is None else f"{image} when its face was cropped")
                    record = Record(photo.name, NOT_PICKED if centre is None else UNREADABLE, reason, faces=count)
                else:
                    best, similarity = most_alike(outcome.embeddings, centre)
                    record = main.write(photo, image, outcome.faces[best], count, "likeness", similarity)
                journal.append(record)
                done[photo.name] = record
                bar.update()


def _identity_centre(main: PhotoWorker, singles: list[Photo], done: dict[str, Record],
                     likeness: Likeness) -> Optional[np.ndarray]:
    """The centre of the embeddings of an identity's one-face photos (cropped again from the photos by their
    recorded points: the crops on disk may be JPEGs), or None without any."""
    embeddings = []
    for photo in sorted(singles, key=lambda p: p.name):
        image = read_photo(main.source / photo.name)
        if isinstance(image, str):
            continue
        points = np.array(done[photo.name].points, np.float32).reshape(5, 2)
        embeddings.append(likeness.embed(crop(image, points, BASE_SIZE)[None])[0])
    return identity_centre(np.stack(embeddings)) if embeddings else None
