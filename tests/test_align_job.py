"""scripts/align.py on folders of real photos: the output tree, landmarks.txt and report.json; re-cropping from
landmarks.txt; resuming after a kill (for real, in a subprocess) and after a torn journal line, byte for byte
equal to an uninterrupted run; two workers equal one; bad photos and bad arguments reported, not fatal."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facetrain.align.journal import JOURNAL_NAME
from facetrain.align.landmarks_file import read_landmarks
from facetrain.data.images import decode_image
from tests.align_helpers import FACES_IN, PHOTOS, photo
from tests.eval_helpers import load_script

align = load_script("align")
REPO = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(source: Path, target: Path, *extra: str) -> int:
    """scripts/align.py's exit code (argument errors exit from the parser)."""
    try:
        return align.main([str(source), str(target), "--workers", "1", "--no-progress", *extra])
    except SystemExit as exit:
        return exit.code


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    """Identity folders of real photos, with the cases a scraped folder holds: a group photo, a grey photo
    turned by EXIF, a transparent PNG, a WebP, a unicode name, a corrupt file, a photo without a face, and
    a non-image file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("people")
    for identity, names in {"biden": ["biden.jpg", "two_people.jpg"], "obama": ["obama.jpg", "obama_and_biden.jpg"],
                            "nasa": ["astronaut.jpg"], "group": ["t1.jpg"]}.items():
        (root / identity).mkdir()
        for name in names:
            shutil.copy(PHOTOS / name, root / identity / name)
    turned = Image.fromarray(np.rot90(photo("obama.jpg"), 1)).convert("L")  # stored on its side, EXIF 6 turns it up
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(root / "obama" / "grey_turned.jpg", exif=exif.tobytes())
    rgba = Image.fromarray(photo("astronaut.jpg")).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "nasa" / "transparent.png")
    Image.fromarray(photo("biden.jpg")).save(root / "biden" / "Байден é.webp", quality=90)
    (root / "nasa" / "corrupt.jpg").write_bytes((PHOTOS / "astronaut.jpg").read_bytes()[:300])
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(root / "nasa" / "wall.jpg")
    (root / "nasa" / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture(scope="module")
def aligned(people, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("aligned") / "out"
    assert run(people, target) == 0
    return target


def test_the_output_mirrors_the_input_with_a_crop_per_photo(people, aligned):
    crops = sorted(str(p.relative_to(aligned)) for p in aligned.rglob("*.jpg"))
    assert crops == ["biden/biden.jpg", "biden/two_people.jpg", "biden/Байден é.jpg", "group/t1.jpg",
                     "nasa/astronaut.jpg", "nasa/transparent.jpg", "obama/grey_turned.jpg", "obama/obama.jpg",
                     "obama/obama_and_biden.jpg"]
    for path in aligned.rglob("*.jpg"):
        assert decode_image(path.read_bytes()).shape == (112, 112, 3)
    coarse = lambda image: cv2.resize(image, (14, 14), interpolation=cv2.INTER_AREA).astype(int)  # noqa: E731
    grey = coarse(decode_image((aligned / "obama/grey_turned.jpg").read_bytes())[..., 0])  # upright again
    colour = coarse(cv2.cvtColor(decode_image((aligned / "obama/obama.jpg").read_bytes()), cv2.COLOR_RGB2GRAY))
    assert np.abs(grey - colour).mean() < 10 < 30 < np.abs(grey - colour[::-1]).mean()
    assert (people / "nasa" / "notes.txt").is_file() and not (aligned / "nasa" / "notes.txt").exists()


def test_the_report_counts_every_photo_and_names_every_skipped_one(aligned):
    report = json.loads((aligned / "report.json").read_text())
    assert report["counts"] == {"photos": 11, "aligned": 9, "no_face": 1, "several_faces": 3, "too_small": 0,
                                "unreadable": 1, "not_picked": 0}
    assert report["skipped"] == [
        {"photo": "nasa/corrupt.jpg", "status": "unreadable", "reason": "cannot be decoded (corrupt, or not an image)"},
        {"photo": "nasa/wall.jpg", "status": "no face", "reason": "no face scores 0.8 or more"}]
    assert "largest face nearest the centre" in report["face_choice"]
    assert report["several_faces"] == [
        {"photo": "biden/two_people.jpg", "faces": FACES_IN["two_people.jpg"], "chosen_by": "position"},
        {"photo": "group/t1.jpg", "faces": FACES_IN["t1.jpg"], "chosen_by": "position"},
        {"photo": "obama/obama_and_biden.jpg", "faces": FACES_IN["obama_and_biden.jpg"], "chosen_by": "position"}]
    assert report["settings"]["size"] == 112 and report["settings"]["detector"] == "yunet"


def test_landmarks_txt_crops_the_same_photos_again_without_detection(people, aligned, tmp_path):
    table = read_landmarks(aligned / "landmarks.txt")
    assert sorted(table) == sorted(json.loads(line)["photo"] for line in (aligned / JOURNAL_NAME).read_text().splitlines()[1:]
                                   if json.loads(line)["status"] == "aligned")
    assert table["biden/Байден é.webp"][1] > 0.8
    again = tmp_path / "again"
    assert run(people, again, "--landmarks", str(aligned / "landmarks.txt")) == 0
    crops = {name: data for name, data in tree(aligned).items() if name.endswith(".jpg")}
    assert {name: data for name, data in tree(again).items() if name.endswith(".jpg")} == crops
    assert (again / "landmarks.txt").read_bytes() == (aligned / "landmarks.txt").read_bytes()
    bigger = tmp_path / "bigger"
    assert run(people, bigger, "--landmarks", str(aligned / "landmarks.txt"), "--size", "224", "--format", "png") == 0
    assert decode_image((bigger / "group" / "t1.png").read_bytes()).shape == (224, 224, 3)


def test_a_run_resumes_from_a_torn_journal_and_equals_an_uninterrupted_one(people, aligned, tmp_path):
    """A run cut short: some crops missing, the journal's last line half written, a temp file of a crop
    being written. The next run redoes what is missing and ends byte for byte where an uninterrupted run ends."""
    partial = tmp_path / "partial"
    shutil.copytree(aligned, partial)
    (partial / "report.json").unlink()
    (partial / "landmarks.txt").unlink()
    lines = (partial / JOURNAL_NAME).read_text().splitlines(keepends=True)
    (partial / JOURNAL_NAME).write_text("".join(lines[:5]) + lines[5][:20])  # 4 photos journaled, one torn
    for name in ("group/t1.jpg", "obama/obama.jpg"):
        (partial / name).unlink(missing_ok=True)
    (partial / "nasa" / ".astronaut.jpg.x1y2.tmp").write_bytes(b"half a crop")
    assert run(people, partial) == 0
    assert tree(partial) == tree(aligned)


def test_a_run_killed_midway_resumes_to_the_same_output(people, aligned, tmp_path):
    """SIGKILL in the middle of a real run (a subprocess), then the same command again."""
    target = tmp_path / "killed"
    command = [sys.executable, str(REPO / "scripts" / "align.py"), str(people), str(target), "--workers", "1", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal, deadline = target / JOURNAL_NAME, time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 3:  # the settings and two photos
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (target / "report.json").exists(), "the run ended before it was killed: nothing was tested"
    assert run(people, target) == 0
    assert tree(target) == tree(aligned)


def test_two_workers_give_the_output_of_one(people, aligned, tmp_path):
    target = tmp_path / "two"
    assert align.main([str(people), str(target), "--workers", "2", "--no-progress"]) == 0
    assert tree(target) == tree(aligned)


def test_a_second_run_skips_what_is_done_and_refuses_other_settings(people, aligned, tmp_path, capsys):
    target = tmp_path / "again"
    shutil.copytree(aligned, target)
    crop = target / "group" / "t1.jpg"
    crop.write_bytes(b"kept as it is")  # a done photo is not redone
    assert run(people, target) == 0
    assert crop.read_bytes() == b"kept as it is"
    assert run(people, target, "--size", "224") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("align: error: ") and "other settings (size 112 -> 224)" in error


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_the_output_may_not_overlap_the_input(people, tmp_path, capsys, where):
    source = tmp_path / "in"
    shutil.copytree(people / "nasa", source / "nasa")
    target = {"same": source, "inside": source / "out", "around": tmp_path}[where]
    before = tree(source)
    assert run(source, target) == 2
    assert "overlaps the input folder" in capsys.readouterr().err
    assert tree(source) == before


@pytest.mark.parametrize("flag, value, message", [
    ("--input-size", "20", "input_size=20 is out of range (an integer in [64, 4096])"),
    ("--min-face", "-1", "min_face=-1 is out of range"),
    ("--score-threshold", "2", "score_threshold=2.0 is out of range (a number in [0, 1])"),
    ("--size", "100", "crop size 100 is not a multiple of 112 or 128"),
    ("--workers", "0", "--workers 0 is below 1"),
    ("--pick", "nearest", "--pick nearest: pass position or model=CHECKPOINT"),
])
def test_bad_settings_are_one_line_errors_with_exit_code_2(people, tmp_path, capsys, flag, value, message):
    assert run(people, tmp_path / "out", flag, value) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_faces_below_the_minimum_size_are_reported_not_cropped(people, tmp_path):
    target = tmp_path / "big_only"
    assert run(people / "group", target, "--min-face", "1000") == 0
    report = json.loads((target / "report.json").read_text())
    assert report["counts"]["too_small"] == 1 and report["counts"]["aligned"] == 0
    assert report["skipped"][0]["reason"].startswith("its largest face is ") and "below the minimum face size 1000" in \
        report["skipped"][0]["reason"]
    assert not list(target.rglob("*.jpg"))


def test_photos_sharing_a_stem_keep_their_extensions(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(PHOTOS / "obama.jpg", source / "face.jpg")
    shutil.copy(PHOTOS / "biden.jpg", source / "face.webp")
    assert run(source, tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["face.jpg.jpg", "face.webp.jpg"]
