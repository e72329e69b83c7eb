"""Raw photos straight into the scripts that embed images (``--align``): their crops are scripts/align.py's, so
that evaluating raw photos equals evaluating the folder scripts/align.py makes of them (lossless crops)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facetrain.align import central, crop, detect
from facetrain.data.verification_bin import load_verification_bin
from facetrain.eval.embed import embed_images
from tests.align_helpers import PHOTOS, photo
from tests.eval_helpers import load_script, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
PEOPLE = {"obama": ["obama.jpg", "obama_and_biden.jpg"], "biden": ["biden.jpg", "two_people.jpg"], "nasa": ["astronaut.jpg"]}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Identity folders of raw photos, a pair list over them, a checkpoint, and scripts/align.py's lossless crops."""
    root = tmp_path_factory.mktemp("raw")
    for identity, names in PEOPLE.items():
        (root / "photos" / identity).mkdir(parents=True)
        for name in names:
            shutil.copy(PHOTOS / name, root / "photos" / identity / name)
    names = [f"{identity}/{name}" for identity, files in PEOPLE.items() for name in files]
    lines = [f"{a} {b} {int(a.split('/')[0] == b.split('/')[0])}" for i, a in enumerate(names) for b in names[i + 1:]]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    write_checkpoint(root / "model.pt", calibrate=np.stack([aligned_face(name) for name in ("obama.jpg", "biden.jpg")]))
    assert load_script("align").main([str(root / "photos"), str(root / "crops"), "--format", "png", "--workers", "1",
                                      "--no-progress"]) == 0
    (root / "crops_pairs.txt").write_text((root / "pairs.txt").read_text().replace(".jpg", ".png"))
    return root


def aligned_face(name: str) -> np.ndarray:
    image = photo(name)
    return crop(image, central(detect(image), image.shape).points)


def test_make_bin_align_stores_each_photos_aligned_face(raw, tmp_path):
    assert load_script("make_bin").main([str(raw / "pairs.txt"), "--images", str(raw / "photos"), "--align",
                                         "--output", str(tmp_path / "mine.bin")]) == 0
    loaded = load_verification_bin(tmp_path / "mine.bin")
    images, issame = loaded.pair_images(), loaded.issame
    names = [name for line in (raw / "pairs.txt").read_text().splitlines() for name in line.split()[:2]]
    assert len(images) == len(names) == 2 * len(issame)
    for name, image in zip(names, images):
        assert np.array_equal(image, aligned_face(name.split("/")[1]))


def test_evaluate_pairs_align_equals_evaluating_the_aligned_folder(raw, tmp_path):
    evaluate = load_script("evaluate")
    common = [str(raw / "model.pt"), "--workers", "0", "--device", "cpu", "--no-progress", "--no-cache"]
    assert evaluate.main([*common, "--pairs", str(raw / "pairs.txt"), "--images", str(raw / "photos"), "--align",
                          "--json", str(tmp_path / "raw.json")]) == 0
    assert evaluate.main([*common, "--pairs", str(raw / "crops_pairs.txt"), "--images", str(raw / "crops"),
                          "--json", str(tmp_path / "crops.json")]) == 0
    raw_result = json.loads((tmp_path / "raw.json").read_text())["models"][0]["targets"]["pairs"]
    crops_result = json.loads((tmp_path / "crops.json").read_text())["models"][0]["targets"]["crops_pairs"]
    assert raw_result == crops_result and raw_result["pairs"] == 10


def test_extract_features_align_embeds_the_faces_and_skips_photos_without_one(raw, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    shutil.copytree(raw / "photos", folder)
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(folder / "nasa" / "wall.jpg")
    turned = Image.fromarray(np.rot90(photo("obama.jpg"), 2))  # stored upside down, EXIF orientation 3 turns it up
    exif = turned.getexif()
    exif[0x0112] = 3
    turned.save(folder / "obama" / "zz_turned.jpg", quality=95, exif=exif.tobytes())
    assert load_script("extract_features").main([str(raw / "model.pt"), "--images", str(folder), "--align", "--output",
                                                 str(tmp_path / "feats.npy"), "--workers", "0", "--device", "cpu",
                                                 "--no-progress"]) == 0
    assert f"{folder / 'nasa' / 'wall.jpg'}: no face scores 0.8 or more" in capsys.readouterr().err
    rows = (tmp_path / "feats.txt").read_text().split()
    expected_rows = [f"{identity}/{name}" for identity in sorted(PEOPLE) for name in sorted(PEOPLE[identity])]
    assert rows == expected_rows + ["obama/zz_turned.jpg"]
    from facetrain import load_backbone

    features = np.load(tmp_path / "feats.npy")
    expected = embed_images(load_backbone(raw / "model.pt"), np.stack([aligned_face(r.split("/")[1]) for r in expected_rows]))
    np.testing.assert_allclose(features[:-1], expected, rtol=1e-5, atol=1e-5)
    from PIL import ImageOps  # the turned photo was turned upright (Pillow's reading of its EXIF) before detection

    upright = np.asarray(ImageOps.exif_transpose(Image.open(folder / "obama" / "zz_turned.jpg")).convert("RGB"))
    face = crop(upright, central(detect(upright), upright.shape).points)
    np.testing.assert_allclose(features[-1], embed_images(load_backbone(raw / "model.pt"), face[None])[0], rtol=1e-5, atol=1e-5)


def test_identify_align_equals_identifying_the_aligned_folder(raw, tmp_path):
    identify = load_script("identify")
    common = [str(raw / "model.pt"), "--workers", "0", "--device", "cpu", "--no-progress", "--no-cache"]
    assert identify.main([*common, "--gallery", str(raw / "photos"), "--probe", str(raw / "photos"), "--align",
                          "--output", str(tmp_path / "raw")]) == 0
    assert identify.main([*common, "--gallery", str(raw / "crops"), "--probe", str(raw / "crops"),
                          "--output", str(tmp_path / "crops")]) == 0
    assert (json.loads((tmp_path / "raw" / "identification.json").read_text())
            == json.loads((tmp_path / "crops" / "identification.json").read_text()))


def test_align_options_are_checked_like_scripts_aligns(raw, tmp_path, capsys):
    code = load_script("evaluate").main([str(raw / "model.pt"), "--pairs", str(raw / "pairs.txt"), "--images",
                                         str(raw / "photos"), "--align", "--min-face", "0", "--no-progress"])
    assert code == 2 and "min_face=0 is out of range" in capsys.readouterr().err
