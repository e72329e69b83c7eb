"""Which face of a photo with several: by position, insightface's own rule (its SCRFD class run here beside
ours on the faces of real group photos), or by likeness to the identity's photos with one face."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facetrain.align import DetectorSettings, Face, central, crop, detect
from facetrain.align.detectors.scrfd import SCRFD
from facetrain.data.transforms import normalize
from facetrain.runs.checkpoint import load_checkpoint, save_checkpoint
from tests.align_helpers import PHOTOS, StandInSession, photo
from tests.eval_helpers import load_script, write_checkpoint

align = load_script("align")


def face_at(x: float, y: float, side: float) -> Face:
    box = np.array([x - side / 2, y - side / 2, x + side / 2, y + side / 2], np.float32)
    return Face(box, np.zeros((5, 2), np.float32), 0.9)


def test_position_rule_trades_size_for_nearness_to_the_centre():
    """Area minus twice the squared distance to the centre: a face 100 px wide 40 px off the centre
    (10000 - 3200) beats one 80 px wide at the centre (6400); 45 px off (10000 - 4050) it does not."""
    shape = (1000, 1000, 3)
    centred = face_at(500, 500, 80)
    assert central([centred, face_at(540, 500, 100)], shape).box[0] == 490
    assert central([centred, face_at(545, 500, 100)], shape) is centred


@pytest.mark.parametrize("name", ["t1.jpg", "obama_and_biden.jpg", "two_people.jpg"])
def test_position_rule_keeps_the_face_insightface_keeps(name):
    """The real faces of a group photo, handed to insightface's ``SCRFD.detect(max_num=1)`` through a
    stand-in network: it keeps the face :func:`central` keeps."""
    image = photo(name)
    faces = detect(image)
    height, width = image.shape[:2]  # insightface's letterbox into 640x640 (these photos are wider than high)
    scale = int(640 * height / width) / height
    stand_in = StandInSession([((1 + 2 * i, 1), f.box * scale, f.points * scale, f.score) for i, f in enumerate(faces)])
    scrfd = SCRFD(DetectorSettings(), session=stand_in)
    boxes, _ = scrfd._net.detect(image[..., ::-1], input_size=(640, 640), max_num=1)
    ours = central(faces, image.shape)
    np.testing.assert_allclose(boxes[0, :4], ours.box, rtol=1e-4)
    assert len(faces) > 1


def test_position_rule_on_a_real_photo_keeps_the_face_left_of_centre(tmp_path):
    """obama_and_biden.jpg: Joe Biden left of centre, Barack Obama right of it and farther, a girl at the
    bottom right: scripts/align.py crops Joe Biden's face."""
    (tmp_path / "in").mkdir()
    shutil.copy(PHOTOS / "obama_and_biden.jpg", tmp_path / "in")
    assert align.main([str(tmp_path / "in"), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 0
    x = float((tmp_path / "out" / "landmarks.txt").read_text().split()[1])
    assert 380 < x < 470  # Joe Biden's left eye (Barack Obama's is near x = 595)


def briefly_trained_checkpoint(path: Path, image: np.ndarray, faces: list[Face]) -> None:
    """A tiny MobileFaceNet, random but for its embedding layer, which is trained here for a moment (100 Adam
    steps on the cached features of 24 jittered crops per face) to tell ``faces`` apart: enough to know a face
    again in another photo, nothing more."""
    rng = np.random.default_rng(0)
    crops, labels = [], []
    for label, face in enumerate(faces):
        eyes = np.linalg.norm(face.points[0] - face.points[1])
        for _ in range(24):
            crops.append(crop(image, face.points + rng.normal(0, 0.05 * eyes, (5, 2)).astype(np.float32)))
            labels.append(label)
    crops = np.stack(crops)
    backbone = write_checkpoint(path, calibrate=crops)
    with torch.no_grad():
        features = torch.flatten(backbone.gdc(backbone.body(normalize(torch.from_numpy(crops).permute(0, 3, 1, 2)))), 1)
    centres = F.normalize(torch.randn(len(faces), backbone.fc.out_features), dim=1)
    optimizer = torch.optim.Adam(backbone.fc.parameters(), lr=1e-2)
    for _ in range(100):
        loss = F.cross_entropy(F.normalize(backbone.fc(features), dim=1) @ centres.T * 16, torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    backbone.features.reset_running_stats()
    with torch.no_grad():
        backbone.features.train()(backbone.fc(features))
    state = load_checkpoint(path)
    save_checkpoint({**state, "backbone": backbone.state_dict()}, path)


def test_pick_by_likeness_keeps_the_identitys_face_in_a_group_photo(tmp_path, one_thread):
    """An identity folder holding Barack Obama alone (cut out of obama_and_biden.jpg, saved as a new JPEG)
    and the whole photo: ``--pick model=CKPT`` crops Barack Obama in the group photo, where the position rule
    crops Joe Biden. A second identity holding only the group photo has no one-face photo to compare with:
    that photo is reported, not cropped.

    This tests the selection on real faces, not a model: the checkpoint was trained here for a moment on
    the group photo's faces (:func:`briefly_trained_checkpoint`); it knows them, nobody else."""
    image = photo("obama_and_biden.jpg")
    source = tmp_path / "in"
    (source / "obama").mkdir(parents=True)
    (source / "nobody_alone").mkdir()
    Image.fromarray(image[100:420, 480:760]).save(source / "obama" / "alone.jpg", quality=95)
    shutil.copy(PHOTOS / "obama_and_biden.jpg", source / "obama" / "group.jpg")
    shutil.copy(PHOTOS / "obama_and_biden.jpg", source / "nobody_alone" / "group.jpg")
    briefly_trained_checkpoint(tmp_path / "model.pt", image, detect(image))
    assert align.main([str(source), str(tmp_path / "out"), "--workers", "1", "--no-progress",
                       "--pick", f"model={tmp_path / 'model.pt'}", "--device", "cpu"]) == 0
    lines = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in
             (tmp_path / "out" / "landmarks.txt").read_text().splitlines()}
    assert 560 < lines["obama/group.jpg"][0] < 620  # Barack Obama's left eye, x of the photo (Joe Biden's: 399)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"] == {"photos": 3, "aligned": 2, "no_face": 0, "several_faces": 2, "too_small": 0,
                                "unreadable": 0, "not_picked": 1}
    assert report["skipped"] == [{"photo": "nobody_alone/group.jpg", "status": "not picked",
                                  "reason": "3 faces, and no photo of nobody_alone with one face to compare them with"}]
    picked = next(e for e in report["several_faces"] if e["photo"] == "obama/group.jpg")
    assert picked["chosen_by"] == "likeness" and 0 < picked["similarity"] <= 1
    assert "most like the identity" in report["face_choice"]


def test_pick_needs_identity_folders(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    shutil.copy(PHOTOS / "t1.jpg", tmp_path / "in")
    write_checkpoint(tmp_path / "model.pt")
    assert align.main([str(tmp_path / "in"), str(tmp_path / "out"), "--no-progress", "--pick",
                       f"model={tmp_path / 'model.pt'}"]) == 2
    assert "--pick model=... needs <input>/<identity>/<photo>" in capsys.readouterr().err
