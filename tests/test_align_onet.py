"""MTCNN's ONet placing the five points on YuNet's faces: the shipped weights are MTCNN's (real faces score
as faces, flat views do not; the points land near YuNet's own), the view square and its mapping back to
photo pixels, one torch thread while it runs, and the crops' keys naming its weights."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facetrain.align import Face, build_detector
from facetrain.align.detectors.yunet import YuNet
from facetrain.align.faces import DetectorSettings
from facetrain.align.job import AlignOptions, run_settings
from facetrain.align.model_file import ONET_FILE, ONET_SHA256, verified_model
from facetrain.align.onet import VIEW_SCALE, refine_points, shipped_onet, view, view_square
from facetrain.align.photos import PhotoAligner
from facetrain.errors import ModelError
from tests.align_helpers import PHOTO_NAMES, photo


class FixedPoints(nn.Module):
    """Stands in for ONet: the same points (x0..x4, y0..y4, fractions of the view) for every view; it
    records its input and torch's thread count while it runs."""

    def __init__(self, fractions: np.ndarray) -> None:
        super().__init__()
        self.fractions, self.seen, self.threads = torch.tensor(fractions, dtype=torch.float32), None, None

    def forward(self, x: torch.Tensor):
        self.seen, self.threads = x.clone(), torch.get_num_threads()
        n = len(x)
        return torch.zeros(n, 2), torch.zeros(n, 4), self.fractions.repeat(n, 1)


def own_faces(image: np.ndarray) -> list[Face]:
    return YuNet(DetectorSettings(), refine=False).detect(image)


def onet_views(image: np.ndarray, faces: list[Face]) -> torch.Tensor:
    views = np.stack([view(image, *view_square(f.box)) for f in faces]).astype(np.float32)
    return torch.from_numpy((views - 127.5) * 0.0078125).permute(0, 3, 1, 2)


def test_the_view_is_the_box_centred_square_of_0_9_times_its_longer_side():
    assert VIEW_SCALE == 0.9
    x0, y0, side = view_square(np.array([100, 50, 180, 150], np.float32))  # 80 x 100, centre (140, 100)
    assert side == 90 and (x0, y0) == (95, 55)


def test_a_view_is_area_resized_and_black_outside_the_photo():
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)
    inside = view(image, 10, 20, 96)
    np.testing.assert_array_equal(inside, cv2.resize(image[20:116, 10:106], (48, 48), interpolation=cv2.INTER_AREA))
    corner = view(image, -48, -48, 96)  # the photo fills the square's lower right quarter
    assert corner.shape == (48, 48, 3) and not corner[:24].any() and not corner[:, :24].any()
    np.testing.assert_array_equal(corner[24:, 24:], cv2.resize(image[:48, :48], (24, 24), interpolation=cv2.INTER_AREA))


def test_onet_fractions_become_photo_pixels_of_each_face_square():
    """Its ten outputs are x0..x4 then y0..y4, fractions of the square: a face half out of the photo too."""
    fractions = np.array([0.3, 0.7, 0.5, 0.35, 0.65, 0.4, 0.4, 0.6, 0.8, 0.8])
    image = np.zeros((200, 300, 3), np.uint8)
    faces = [Face(np.array([100, 50, 180, 150], np.float32), np.zeros((5, 2), np.float32), 0.9),
             Face(np.array([-40, 120, 20, 200], np.float32), np.zeros((5, 2), np.float32), 0.8)]
    net = FixedPoints(fractions)
    refined = refine_points(image, faces, net)
    for face, new in zip(faces, refined):
        x0, y0, side = view_square(face.box)
        expected = np.stack([x0 + fractions[:5] * side, y0 + fractions[5:] * side], axis=1)
        np.testing.assert_allclose(new.points, expected, atol=1e-4)
        assert new.box is face.box and new.score == face.score
    assert tuple(net.seen.shape) == (2, 3, 48, 48)
    assert refine_points(image, [], net) == []


def test_onet_sees_rgb_scaled_to_minus_one_one_on_one_torch_thread():
    image = np.zeros((100, 100, 3), np.uint8)
    image[..., 0] = 255  # red
    net = FixedPoints(np.full(10, 0.5))
    threads = torch.get_num_threads()
    refine_points(image, [Face(np.array([20, 20, 80, 80], np.float32), np.zeros((5, 2), np.float32), 0.9)], net)
    np.testing.assert_allclose(net.seen[0, :, 24, 24], [(255 - 127.5) / 128, -127.5 / 128, -127.5 / 128])
    assert net.threads == 1 and torch.get_num_threads() == threads


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_the_shipped_onet_is_mtcnns_real_faces_score_as_faces_and_its_points_land_near_yunets(name):
    image = photo(name)
    faces = own_faces(image)
    with torch.inference_mode():
        probability = shipped_onet()(onet_views(image, faces))[0][:, 1]
    assert (probability > 0.99).all()
    for face, refined in zip(faces, refine_points(image, faces)):
        eyes = np.linalg.norm(face.points[0] - face.points[1])
        assert np.linalg.norm(refined.points - face.points, axis=1).mean() < 0.25 * eyes


def test_the_shipped_onet_finds_no_face_in_flat_or_random_views():
    views = np.stack([np.full((48, 48, 3), 127, np.uint8),
                      np.random.default_rng(0).integers(0, 256, (48, 48, 3), np.uint8)]).astype(np.float32)
    with torch.inference_mode():
        probability = shipped_onet()(torch.from_numpy((views - 127.5) * 0.0078125).permute(0, 3, 1, 2))[0][:, 1]
    assert (probability < 0.01).all()


def test_yunet_places_its_points_with_onet_by_default():
    image = photo("obama_and_biden.jpg")
    faces = build_detector("yunet").detect(image)
    expected = refine_points(image, own_faces(image))
    assert len(faces) == len(expected) == 3
    for face, refined in zip(faces, expected):
        np.testing.assert_array_equal(face.points, refined.points)
        np.testing.assert_array_equal(face.box, refined.box)


def test_the_onet_weights_are_checked_against_their_sha256(tmp_path):
    assert verified_model(ONET_FILE, ONET_SHA256) == ONET_FILE
    altered = tmp_path / ONET_FILE.name
    shutil.copy(ONET_FILE, altered)
    with altered.open("r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelError, match="has been altered"):
        verified_model(altered, ONET_SHA256)


def test_crops_keys_name_the_onet_weights_where_they_place_the_points():
    """Journals and feature caches made with YuNet's own points are not taken for ONet's."""
    assert PhotoAligner().key()["points_model_sha256"] == ONET_SHA256
    yunet = build_detector("yunet")
    assert run_settings(AlignOptions(), yunet, None)["points_model_sha256"] == ONET_SHA256
    assert "points_model_sha256" not in YuNet(DetectorSettings(), refine=False).points_key()
