"""IJB-B/C 1:1: template pooling as insightface's loops compute it, and scripts/eval_ijb.py end to end on a
small IJB-style folder written here (the crop itself: tests/test_align_crop.py)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facetrain.data.images import decode_image, encode_jpeg
from facetrain.data.synthetic_faces import render_face, sample_identity
from facetrain.errors import DataError
from facetrain.eval.embed import embed_images
from facetrain.align import ARCFACE_DST, crop
from facetrain.eval.ijb import pair_scores, read_ijb_meta, score_templates, template_features
from tests.eval_helpers import load_script, write_checkpoint

eval_ijb = load_script("eval_ijb")
pytestmark = pytest.mark.usefixtures("one_thread")


def random_similarity(rng: np.random.Generator, scale=(0.9, 1.3), shift=(15, 45)) -> np.ndarray:
    s, angle = rng.uniform(*scale), rng.uniform(-0.5, 0.5)
    return np.array([[s * np.cos(angle), -s * np.sin(angle), rng.uniform(*shift)],
                     [s * np.sin(angle), s * np.cos(angle), rng.uniform(*shift)]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


# ---- an IJB-style folder ----------------------------------------------------------------------------
IDENTITIES = 4
# per identity two templates; a template's media (id, frames); media 7 recurs in both of an identity's
# templates, as IJB's videos do; template ids are sparse
TEMPLATE_MEDIA = [((7, 2), (30, 1)), ((7, 1), (31, 1))]


def write_ijb_folder(root: Path, target: str = "IJBC", seed: int = 0) -> dict:
    """``root/<target>/loose_crop/*.jpg`` and ``meta/`` in insightface's layout: each identity's face
    placed by a random similarity transform into a larger crop, landmarks the transformed reference
    points, random detector scores, and every pair of templates."""
    rng = np.random.default_rng(seed)
    folder = root / target
    (folder / "loose_crop").mkdir(parents=True)
    (folder / "meta").mkdir()
    faces, tid_mid, points, template_identity, template_images = [], [], [], {}, {}
    for identity in range(IDENTITIES):
        face = render_face(sample_identity(rng), rng)
        for t, media in enumerate(TEMPLATE_MEDIA):
            template = 100 + 17 * (2 * identity + t)
            template_identity[template] = identity
            for media_id, frames in media:
                for _ in range(frames):
                    name = f"{len(faces) + 1}.jpg"
                    matrix = random_similarity(rng)
                    loose = cv2.warpAffine(face, matrix, (200, 210), borderValue=0.0)
                    (folder / "loose_crop" / name).write_bytes(encode_jpeg(loose, quality=98))
                    landmarks = apply(matrix, ARCFACE_DST)
                    faces.append(face)
                    template_images.setdefault(template, []).append(name)
                    tid_mid.append(f"{name} {template} {media_id + 1000 * identity}\n")
                    numbers = " ".join(f"{v:.3f}" for v in landmarks.ravel())
                    points.append(f"{name} {numbers} {rng.uniform(0.3, 1.0):.4f}\n")
    templates = sorted(template_identity)
    pairs = [(a, b, int(template_identity[a] == template_identity[b])) for i, a in enumerate(templates) for b in templates[i + 1:]]
    prefix = folder / "meta" / target.lower()
    Path(f"{prefix}_face_tid_mid.txt").write_text("".join(tid_mid))
    Path(f"{prefix}_name_5pts_score.txt").write_text("".join(points))
    Path(f"{prefix}_template_pair_label.txt").write_text("".join(f"{a} {b} {label}\n" for a, b, label in pairs))
    lists = write_1n_lists(prefix, target, template_identity, template_images)
    return {"folder": folder, "faces": np.stack(faces), "pairs": np.array(pairs), "one_n": lists}


ONE_N_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"


def write_1n_lists(prefix: Path, target: str, template_identity: dict, template_images: dict) -> dict:
    """The 1:N lists in the official CSV layout (header line, one line per image, template and subject
    first): gallery 1 enrols identities 0 and 1 by their first template, gallery 2 identities 2 and 3,
    and every identity's second template is a probe. Subject ids are 1000 + identity."""
    first = {identity: min(t for t, i in template_identity.items() if i == identity) for identity in range(IDENTITIES)}
    names = ("S1", "S2") if target == "IJBB" else ("G1", "G2")
    lists = {names[0]: [first[0], first[1]], names[1]: [first[2], first[3]],
             "probe_mixed": sorted(set(template_identity) - set(first.values()))}
    for name, templates in lists.items():
        kind = "probe" if name == "probe_mixed" else "gallery"
        rows = [f"{t},{1000 + template_identity[t]},img/{image},{7 * t},10,12,80,96\n"
                for t in templates for image in template_images[t]]
        Path(f"{prefix}_1N_{kind}_{name}.csv" if kind == "gallery" else f"{prefix}_1N_probe_mixed.csv").write_text(
            ONE_N_HEADER + "".join(rows))
    return {name: {t: 1000 + template_identity[t] for t in templates} for name, templates in lists.items()}


def insightface_scores(img_feats, templates, medias, pairs):
    """image2template_feature and verification of insightface's ijb_11.py, restated with their loops."""
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count, uqt in enumerate(unique_templates):
        face_feats, face_medias = img_feats[templates == uqt], medias[templates == uqt]
        template_feats[count] = np.sum([face_feats[face_medias == u].mean(0) for u in np.unique(face_medias)], 0)
    template_feats /= np.linalg.norm(template_feats, axis=1, keepdims=True)
    row = {t: i for i, t in enumerate(unique_templates)}
    return np.array([template_feats[row[a]] @ template_feats[row[b]] for a, b in pairs])


def make_ijb(root: Path) -> dict:
    """An IJB-C folder below ``root`` and ``root/model.pt``, a checkpoint calibrated on its faces."""
    written = write_ijb_folder(root)
    faces = written["faces"][:: len(written["faces"]) // IDENTITIES]  # one per identity
    backbone = write_checkpoint(root / "model.pt", calibrate=faces)
    return {"root": root, "backbone": backbone, **written}


@pytest.fixture(scope="module")
def ijb(tmp_path_factory) -> dict:
    return make_ijb(tmp_path_factory.mktemp("ijb"))


def reference_image_features(ijb: dict) -> tuple[np.ndarray, object]:
    meta = read_ijb_meta(ijb["root"], "IJBC")
    aligned = np.stack([crop(decode_image((meta.image_dir / name).read_bytes()), lm)
                        for name, lm in zip(meta.names, meta.landmarks)])
    return embed_images(ijb["backbone"], aligned, flip="sum"), meta


def run_eval_ijb(ijb: dict, out: Path, *extra: str) -> int:
    return eval_ijb.main([str(ijb["root"] / "model.pt"), "--ijb-root", str(ijb["root"]), "--target", "IJBC",
                          "--output", str(out), "--workers", "0", "--batch-size", "8", "--device", "cpu",
                          "--no-progress", *extra])


def test_meta_files_are_read_in_insightface_layout(ijb):
    meta = read_ijb_meta(ijb["root"], "IJBC")  # --ijb-root may be the IJBC folder or its parent
    assert meta.folder == ijb["folder"] and read_ijb_meta(ijb["folder"], "IJBC").folder == ijb["folder"]
    assert len(meta.names) == len(ijb["faces"]) == IDENTITIES * 5
    np.testing.assert_array_equal(meta.pairs, ijb["pairs"][:, :2])
    np.testing.assert_array_equal(meta.labels, ijb["pairs"][:, 2] == 1)
    assert meta.landmarks.shape == (len(meta.names), 5, 2) and meta.detector_scores.min() >= 0.3


def test_vectorised_pooling_matches_insightface_loops():
    rng = np.random.default_rng(3)
    templates = rng.choice([5, 9, 40, 41, 1000], size=300)
    medias = rng.integers(0, 12, size=300)
    feats = rng.normal(size=(300, 8)).astype(np.float32)
    pairs = np.array([(a, b) for a in (5, 9, 40) for b in (41, 1000, 5)])
    ids, pooled = template_features(feats, templates, medias)
    scores = pair_scores(ids, pooled, pairs, block_rows=2)
    np.testing.assert_allclose(scores, insightface_scores(feats, templates, medias, pairs), rtol=1e-6, atol=1e-7)


def test_eval_ijb_end_to_end(ijb, tmp_path, capsys):
    assert run_eval_ijb(ijb, tmp_path) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "IJBC: 8 templates, 28 pairs; TAR (%) at FAR"
    assert table[1].split() == ["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1"]
    assert table[2].split() == ["-"] * 5 + ["100.00"]  # 24 negative pairs resolve only FAR 1e-1
    features, meta = reference_image_features(ijb)
    expected = insightface_scores(features * meta.detector_scores[:, None], meta.templates, meta.medias, meta.pairs)
    scores = np.load(tmp_path / "ijbc_scores.npy")
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    labels = meta.labels
    assert scores[labels].min() > scores[~labels].max()  # each identity's crops align onto one face
    report = json.loads((tmp_path / "ijbc.json").read_text())
    assert report["pairs"] == len(labels) and report["negative_pairs"] == int((~labels).sum()) == 24
    assert report["tar_at_far"] == {"1e-6": None, "1e-5": None, "1e-4": None, "1e-3": None, "1e-2": None, "1e-1": 1.0}
    assert report["auc"] == 1.0 and report["eer"] == 0.0
    for png in ("ijbc_roc.png", "ijbc_scores.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    plain = score_templates(features, meta, detector_score=False).scores  # --no-detector-score
    np.testing.assert_allclose(plain, insightface_scores(features, meta.templates, meta.medias, meta.pairs),
                               rtol=1e-6, atol=1e-7)
    assert np.abs(plain - scores).max() > 1e-4


def test_corrected_landmarks_make_new_features(broken, tmp_path, monkeypatch):
    """The feature cache is keyed by the landmarks' values: a corrected landmarks file (same images, same file
    size and modification time) is embedded again; unchanged meta files reuse the features."""
    out = tmp_path / "out"
    import facetrain.eval.ijb as ijb_module

    passes = []
    embed = ijb_module.embed_files
    monkeypatch.setattr(ijb_module, "embed_files", lambda *args, **kwargs: passes.append(1) or embed(*args, **kwargs))
    assert run_eval_ijb(broken, out, "--protocol", "1v1") == 0 and len(passes) == 1
    points = broken["folder"] / "meta" / "ijbc_name_5pts_score.txt"
    before, lines = points.stat(), points.read_text().splitlines(keepends=True)
    name, x, rest = lines[0].split(" ", 2)
    lines[0] = f"{name} {float(x) + 1:.3f} {rest}"  # one landmark moved by a pixel
    assert len(lines[0]) == len(points.read_text().splitlines(keepends=True)[0])
    points.write_text("".join(lines))
    os.utime(points, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert run_eval_ijb(broken, out, "--protocol", "1v1") == 0 and len(passes) == 2
    cached = sorted(out.glob("features_*.npy"))
    assert len(cached) == 2 and not np.array_equal(*(np.load(path) for path in cached))
    assert run_eval_ijb(broken, out, "--protocol", "1v1") == 0 and len(passes) == 2  # nothing changed: reused


# ---- bad input --------------------------------------------------------------------------------------
@pytest.fixture
def broken(ijb, tmp_path) -> dict:
    """A copy of the IJB folder to damage."""
    shutil.copytree(ijb["root"], tmp_path / "copy")
    return {**ijb, "root": tmp_path / "copy", "folder": tmp_path / "copy" / "IJBC"}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("name", ["ijbc_face_tid_mid.txt", "ijbc_template_pair_label.txt", "ijbc_name_5pts_score.txt"])
def test_missing_meta_file_is_named(broken, tmp_path, capsys, name):
    (broken["folder"] / "meta" / name).unlink()
    assert run_eval_ijb(broken, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert err.startswith("eval_ijb: error: IJB meta file") and name in err and "insightface's IJBC folder" in err


def test_meta_files_that_disagree_are_refused(broken):
    points = broken["folder"] / "meta" / "ijbc_name_5pts_score.txt"
    lines = points.read_text().splitlines(keepends=True)
    points.write_text("".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(DataError, match="list different images \\(from line 1"):
        read_ijb_meta(broken["root"], "IJBC")
    pairs = broken["folder"] / "meta" / "ijbc_template_pair_label.txt"
    points.write_text("".join(lines))
    pairs.write_text(pairs.read_text() + "100 999 0\n")
    with pytest.raises(DataError, match="template 999 of ijbc_template_pair_label.txt has no image"):
        read_ijb_meta(broken["root"], "IJBC")
    pairs.write_text("100 117\n")
    with pytest.raises(DataError, match="has 2 columns, not 3"):
        read_ijb_meta(broken["root"], "IJBC")


def test_missing_image_stops_with_its_name(broken, tmp_path, capsys):
    (broken["folder"] / "loose_crop" / "3.jpg").unlink()
    assert run_eval_ijb(broken, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "3.jpg cannot be read (No such file or directory)" in err and "restore it" in err and not (tmp_path / "out").exists()
