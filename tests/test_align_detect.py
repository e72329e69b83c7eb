"""Detection on real photos (tests/data/photos): every face found, five points in the template's order, the
detection settings' ranges, the shipped model's checksum; SCRFD's wrapper on a stand-in session, and on the
real det_10g.onnx where one is present."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from facetrain.align import DetectorSettings, build_detector, detect
from facetrain.align.detectors.scrfd import SCRFD
from facetrain.align.detectors.yunet import YuNet
from facetrain.align.model_file import YUNET_FILE, verified_model
from facetrain.errors import ConfigError, ModelError
from tests.align_helpers import FACES_IN, PHOTO_NAMES, StandInSession, photo

SCRFD_MODEL = Path(os.environ.get("FACETRAIN_SCRFD_MODEL", Path.home() / ".insightface/models/buffalo_l/det_10g.onnx"))


def assert_template_order(points: np.ndarray) -> None:
    """Upright faces: left eye left of right eye, left mouth corner left of right one (as seen in the photo),
    eyes above the nose tip, the nose tip above the mouth corners."""
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_yunet_finds_every_face_of_the_real_photos_with_points_in_template_order(name):
    image = photo(name)
    faces = detect(image)
    assert len(faces) == FACES_IN[name]
    for face in faces:
        assert_template_order(face.points)
        x1, y1, x2, y2 = face.box
        assert (x1 <= face.points[:, 0]).all() and (face.points[:, 0] <= x2).all()
        assert (y1 <= face.points[:, 1]).all() and (face.points[:, 1] <= y2).all()
        assert 0.8 <= face.score <= 1
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_detection_is_in_photo_pixels_whatever_the_input_size():
    """A photo enlarged 2x by repeating pixels is scaled back to the very same pixels for detection at the
    same input size: its faces are the photo's, at twice the coordinates. ONet then looks at each face in the
    photo itself, in squares rounded to whole pixels: its points agree to within 2% of the eye distance."""
    image = photo("t1.jpg")
    doubled = image.repeat(2, axis=0).repeat(2, axis=1)
    settings = DetectorSettings(input_size=max(image.shape[:2]))
    own_points = YuNet(settings, refine=False)
    assert len(own_points.detect(image)) == FACES_IN["t1.jpg"]
    for face, twice in zip(own_points.detect(image), own_points.detect(doubled)):
        np.testing.assert_allclose(twice.points, 2 * face.points, rtol=1e-6)
        np.testing.assert_allclose(twice.box, 2 * face.box, rtol=1e-6)
    faces, faces_of_doubled = detect(image, settings=settings), detect(doubled, settings=settings)
    assert len(faces) == len(faces_of_doubled) == FACES_IN["t1.jpg"]
    for face, twice in zip(faces, faces_of_doubled):
        np.testing.assert_allclose(twice.box, 2 * face.box, rtol=1e-6)
        eyes = np.linalg.norm(twice.points[0] - twice.points[1])
        assert np.abs(twice.points - 2 * face.points).max() < 0.02 * eyes


def test_a_photo_without_a_face_gives_none():
    blank = np.full((480, 640, 3), 127, np.uint8)
    assert detect(blank) == []


def test_score_threshold_filters_faces():
    image = photo("t1.jpg")
    scores = [f.score for f in detect(image)]
    strict = detect(image, settings=DetectorSettings(score_threshold=float(np.median(scores))))
    assert 0 < len(strict) < len(scores) and min(f.score for f in strict) >= np.median(scores)


@pytest.mark.parametrize("key, value, message", [
    ("input_size", 32, "input_size=32 is out of range (an integer in [64, 4096]); pass e.g. --input-size 640"),
    ("input_size", 640.5, "an integer"),
    ("min_face", 0, "min_face=0 is out of range"),
    ("score_threshold", 1.5, "score_threshold=1.5 is out of range (a number in [0, 1])"),
    ("score_threshold", float("nan"), "score_threshold=nan is out of range"),
])
def test_detection_settings_out_of_range_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError) as error:
        DetectorSettings(**{key: value})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_shipped_model_is_checked_against_its_sha256(tmp_path):
    assert verified_model() == YUNET_FILE
    altered = tmp_path / YUNET_FILE.name
    shutil.copy(YUNET_FILE, altered)
    with altered.open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelError, match="has been altered"):
        verified_model(altered)
    with pytest.raises(ModelError, match="is missing"):
        verified_model(tmp_path / "gone.onnx")


def test_a_user_model_that_is_not_yunet_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="cannot load"):
        YuNet(DetectorSettings(), bad)


# ---- SCRFD --------------------------------------------------------------------------------------------
def test_scrfd_wrapper_feeds_bgr_and_maps_the_face_back_to_photo_pixels():
    """A 1280x886 photo is letterboxed to 640x443 (scale 0.5): a face the stand-in model sees at network
    pixels comes back at twice those, points in the order given, and the blob holds the photo's red channel
    first (insightface's SCRFD takes BGR and swaps it)."""
    image = np.zeros((886, 1280, 3), np.uint8)
    image[..., 0] = 200  # red
    box = np.array([140, 80, 200, 160], np.float32)
    points = np.array([[155, 110], [185, 110], [170, 125], [158, 140], [182, 140]], np.float32)
    session = StandInSession([((11, 7), box, points, 0.9)])
    faces = SCRFD(DetectorSettings(input_size=640), session=session).detect(image)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, box / 0.5, atol=1e-3)
    np.testing.assert_allclose(faces[0].points, points / 0.5, atol=1e-3)
    assert faces[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(session.blob[0, :, 100, 100], [(200 - 127.5) / 128, -127.5 / 128, -127.5 / 128], atol=1e-6)


def test_scrfd_without_its_model_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="needs its model file.*--detector-model"):
        build_detector("scrfd")
    with pytest.raises(ConfigError, match="does not exist"):
        build_detector("scrfd", model=tmp_path / "det_10g.onnx")


@pytest.mark.skipif(not SCRFD_MODEL.is_file(), reason=f"no SCRFD model at {SCRFD_MODEL} (set FACETRAIN_SCRFD_MODEL "
                                                      "to insightface's buffalo_l/det_10g.onnx to run this)")
@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_scrfd_finds_the_faces_yunet_finds_with_points_in_template_order(name):
    image = photo(name)
    faces = build_detector("scrfd", model=SCRFD_MODEL).detect(image)
    yunet = detect(image)
    for face in yunet:
        nearest = min(faces, key=lambda f: np.abs(f.centre - face.centre).sum())
        assert_template_order(nearest.points)
        eyes = np.linalg.norm(nearest.points[0] - nearest.points[1])
        assert np.linalg.norm(nearest.points - face.points, axis=1).mean() < 0.25 * eyes
